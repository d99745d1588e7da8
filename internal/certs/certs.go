package certs

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for [Config] fields left zero.
const (
	// DefaultTicketRotation is how often a new session ticket key is made.
	DefaultTicketRotation = time.Hour
	// DefaultTicketKeys is how many ticket keys are kept: a ticket is
	// accepted for up to DefaultTicketKeys × DefaultTicketRotation.
	DefaultTicketKeys = 24
	// DefaultDebounce is how long the files' directories must be quiet
	// after a change before the pairs are read again.
	DefaultDebounce = 100 * time.Millisecond
)

// DefaultNextProtos are the ALPN protocols [Store.Config] offers when
// Config.NextProtos is nil: HTTP/2 first, then HTTP/1.1.
var DefaultNextProtos = []string{"h2", "http/1.1"}

// DefaultCipherSuites are the TLS 1.2 suites a store allows: ECDHE with an
// AEAD only (forward secrecy, no CBC, no RSA key exchange), ECDSA first.
// TLS 1.3's suites are not configurable in crypto/tls and all are good.
var DefaultCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Pair names the PEM files of one certificate: CertFile holds the leaf
// certificate followed by its intermediates, KeyFile its private key.
// Both may be the same file.
type Pair struct {
	CertFile string
	KeyFile  string
}

// Config configures a [Store]. Only Pairs is required; every other field
// has a useful zero value, documented on the field.
type Config struct {
	// Pairs are the certificates to serve. Required. A client's server
	// name picks the pair whose certificate names it exactly, else one
	// whose wildcard (*.example.com) covers it, else the first pair.
	Pairs []Pair
	// MinVersion is the lowest TLS version accepted. Zero means TLS 1.2;
	// lower versions are refused.
	MinVersion uint16
	// NextProtos are the ALPN protocols of [Store.Config]. Nil means
	// DefaultNextProtos.
	NextProtos []string
	// CipherSuites are the TLS 1.2 suites. Nil means DefaultCipherSuites.
	CipherSuites []uint16
	// TicketRotation is how often a new session ticket key is made.
	// Zero means DefaultTicketRotation; negative turns session tickets
	// (and so resumption) off.
	TicketRotation time.Duration
	// TicketKeys is how many ticket keys are kept, the newest used to
	// issue tickets and all to accept them. Zero means DefaultTicketKeys.
	TicketKeys int
	// Watch makes the store read the pairs again when their files change
	// (a write, or a file renamed or linked over another, as by
	// certificate managers and Kubernetes secret volumes).
	Watch bool
	// Debounce is how long the watched directories must be quiet before
	// the pairs are read. Zero means DefaultDebounce.
	Debounce time.Duration
	// OnReload, when set, is called after every reload the watcher makes,
	// with nil when the new pairs are served and the error when the old
	// ones are kept. It is called from the watcher's goroutine.
	OnReload func(error)
	// Logger receives reload and watch errors. Nil means slog.Default().
	Logger *slog.Logger
}

// Store holds the certificates and session ticket keys of TLS listeners.
// Its methods are safe for concurrent use; handshakes read the current
// certificates without locks.
type Store struct {
	cfg     Config
	log     *slog.Logger
	set     atomic.Pointer[certSet]
	reload  sync.Mutex // serialises reads of the files
	mu      sync.Mutex // guards inner, keys
	inner   map[string]*tls.Config
	keys    [][32]byte
	cancel  context.CancelFunc
	done    chan struct{}
	closeMu sync.Once
}

// New loads cfg's pairs and returns a store serving them. It starts a
// goroutine (ticket key rotation, and the file watch with cfg.Watch)
// that [Store.Close] stops.
func New(cfg Config) (*Store, error) {
	if len(cfg.Pairs) == 0 {
		return nil, errors.New("certs: Config.Pairs is empty")
	}
	for i, p := range cfg.Pairs {
		if p.CertFile == "" || p.KeyFile == "" {
			return nil, fmt.Errorf("certs: pair %d: CertFile and KeyFile are required", i)
		}
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		return nil, errors.New("certs: MinVersion below TLS 1.2")
	}
	if cfg.NextProtos == nil {
		cfg.NextProtos = DefaultNextProtos
	}
	if cfg.CipherSuites == nil {
		cfg.CipherSuites = DefaultCipherSuites
	}
	if cfg.TicketRotation == 0 {
		cfg.TicketRotation = DefaultTicketRotation
	}
	if cfg.TicketKeys < 0 {
		return nil, errors.New("certs: TicketKeys is negative")
	}
	if cfg.TicketKeys == 0 {
		cfg.TicketKeys = DefaultTicketKeys
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	s := &Store{cfg: cfg, log: cfg.Logger, inner: make(map[string]*tls.Config), done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	if cfg.TicketRotation > 0 {
		s.rotate()
	}
	w, err := s.newWatcher()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(ctx, w)
	return s, nil
}

// Config returns a TLS configuration for a server that speaks the
// store's NextProtos (by default HTTP/2 and HTTP/1.1, for net/http).
// Clones of it (net/http clones its TLSConfig) keep following the store's
// certificates and ticket keys: its GetConfigForClient hands every
// handshake to a configuration the store owns, so changes made to the
// returned value do not reach handshakes. Each call returns a new value
// over the same shared state.
func (s *Store) Config() *tls.Config { return s.ConfigALPN(s.cfg.NextProtos...) }

// ConfigALPN is [Store.Config] offering the ALPN protocols protos
// instead, for a server that speaks only some, e.g. "http/1.1" for an
// HTTP/1.1-only server, or none for a TCP proxy.
func (s *Store) ConfigALPN(protos ...string) *tls.Config {
	in := s.innerFor(protos)
	return &tls.Config{
		MinVersion: in.MinVersion,
		NextProtos: in.NextProtos,
		// The handshake runs on in: its certificates and ticket keys
		// are the store's whatever was cloned from the value returned.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return in, nil },
		GetCertificate:     in.GetCertificate,
		CipherSuites:       in.CipherSuites,
	}
}

// innerFor returns the configuration handshakes run on for protos, made
// once per protocol list.
func (s *Store) innerFor(protos []string) *tls.Config {
	key := strings.Join(protos, "\x00") // registered ALPN names hold no NUL
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.inner[key]; ok {
		return in
	}
	in := &tls.Config{
		MinVersion:             s.cfg.MinVersion,
		CipherSuites:           s.cfg.CipherSuites,
		NextProtos:             slices.Clone(protos),
		GetCertificate:         s.getCertificate,
		SessionTicketsDisabled: s.cfg.TicketRotation < 0,
	}
	if len(s.keys) > 0 {
		in.SetSessionTicketKeys(s.keys)
	}
	s.inner[key] = in
	return in
}

// Reload reads every pair's files again and, if all load, serves them
// from the next handshake on; established connections are untouched.
// If any pair fails, the store keeps serving the pairs it had and
// returns the error.
func (s *Store) Reload() error {
	s.reload.Lock()
	defer s.reload.Unlock()
	set, err := loadSet(s.cfg.Pairs)
	if err != nil {
		return err
	}
	s.set.Store(set)
	return nil
}

// Close stops the store's goroutine and waits for it. Configurations it
// handed out keep serving the last certificates. It is idempotent and
// returns nil.
func (s *Store) Close() error {
	s.closeMu.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

func (s *Store) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.set.Load().pick(hello), nil
}

// rotate makes a new ticket key, puts it first and drops the oldest
// beyond TicketKeys.
func (s *Store) rotate() {
	var k [32]byte
	rand.Read(k[:]) // never fails (crypto/rand)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append([][32]byte{k}, s.keys...)
	if len(s.keys) > s.cfg.TicketKeys {
		s.keys = s.keys[:s.cfg.TicketKeys]
	}
	for _, in := range s.inner {
		in.SetSessionTicketKeys(s.keys)
	}
}
