package tcpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/serve"
	"github.com/lbkit/lbkit/proxyproto"
)

// Defaults for [Config] fields left zero.
const (
	DefaultDialTimeout   = 3 * time.Second
	DefaultDialAttempts  = 3
	DefaultIdleTimeout   = 10 * time.Minute
	DefaultHeaderTimeout = 5 * time.Second
)

// ErrServerClosed is returned by [Server.Serve] and [Server.ListenAndServe]
// when they are called after [Server.Shutdown] or [Server.Close].
var ErrServerClosed = errors.New("tcpproxy: server closed")

// ErrNoBackend is what a client connection fails with (in logs) when no
// backend accepted it: none ready, all at their connection limit, or every
// dial attempt failed.
var ErrNoBackend = errors.New("tcpproxy: no backend took the connection")

// errStopped is what the serve group's Serve returns once the server was
// stopped; Serve turns it into nil.
var errStopped = errors.New("tcpproxy: stopped")

// Config configures a [Server]. Pool is required; every other field has a
// useful zero value, documented on the field. Every field can be changed
// while serving with [Server.Update].
type Config struct {
	// Pool is the pool the proxy picks backends from. Required. The
	// proxy follows its membership and health as they change (no call
	// needed) and never closes it: the pool belongs to its creator.
	Pool *balancer.Pool

	// Routes sends a TLS connection to another pool by the server name
	// its ClientHello asks for (SNI), without terminating TLS: the proxy
	// reads the ClientHello (within HeaderTimeout), picks the pool and
	// forwards the hello and the rest of the stream untouched. Keys are
	// server names, matched without regard to case, or wildcards
	// ("*.example.com" matches one more label); an exact key wins.
	// Connections without a server name, with one that matches no key, or
	// that are not TLS go to Pool. With Routes set a client must speak
	// first, as TLS clients do: one that sends nothing for HeaderTimeout
	// is closed. With TLS set the name the handshake agreed routes
	// instead. The proxy follows these pools like Pool and never closes
	// them.
	Routes map[string]*balancer.Pool
	// TLS, when not nil, terminates TLS on client connections with its
	// certificates (read again by every Update) and forwards the
	// decrypted stream to backends. Session resumption (tickets) is on
	// and survives Updates. The handshake must finish within
	// HeaderTimeout.
	TLS *TLS

	// Key says how a connection's pick key is derived. The zero value is
	// no key: the pool's policy picks freely. A client key ("client",
	// "client/24") hashes the client's address under its prefix, so a
	// hash-based policy (Maglev, ring hash) keeps a client on one
	// backend; a flow key hashes the connection's 5-tuple. The keys of
	// requests (header, cookie, path, query) fall back to the client's
	// address, as balancer.Key documents.
	Key balancer.Key

	// DialTimeout bounds each connection attempt to a backend. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// DialAttempts is how many distinct backends a client connection may
	// be tried on when dialing fails or a backend is at its limit. Zero
	// means DefaultDialAttempts.
	DialAttempts int
	// IdleTimeout closes a connection on which neither side sent anything
	// for that long (detected between IdleTimeout and twice it). Zero
	// means DefaultIdleTimeout; negative disables it.
	IdleTimeout time.Duration
	// KeepAlive is the TCP keep-alive idle time (and probe interval) of
	// both sockets of a connection: the backend's always, the client's
	// when the server listens itself with [Server.ListenAndServe] (a
	// listener given to Serve keeps its own setting). Zero or negative
	// means no keep-alive probes, as HAProxy's default: IdleTimeout
	// already ends connections whose peer vanished, and Go's default
	// probes cost four setsockopt calls per socket.
	KeepAlive time.Duration
	// MaxConnsPerBackend caps this proxy's open connections to each
	// backend. A full backend is skipped for another; when all tried are
	// full the client connection is closed. Zero means no limit.
	MaxConnsPerBackend int

	// ProxyProtocol, when proxyproto.V1 or V2, sends a PROXY protocol
	// header of that version to the backend first, carrying the client's
	// address and the address it connected to. Zero sends none.
	ProxyProtocol proxyproto.Version
	// AcceptProxyProtocol makes the proxy expect a PROXY protocol header
	// (either version) first on every client connection, as HAProxy's
	// accept-proxy does, for a proxy that sits behind another proxy or
	// load balancer. The addresses in the header then stand for the
	// client's: the key hashes them and the header sent to backends
	// carries them (a LOCAL or address-less header keeps the real ones).
	// A connection whose header is invalid or late is closed. Enable it
	// only when every client is a trusted proxy: anyone else could claim
	// any address.
	AcceptProxyProtocol bool
	// HeaderTimeout bounds the wait for a client's PROXY header with
	// AcceptProxyProtocol. Zero means DefaultHeaderTimeout.
	HeaderTimeout time.Duration

	// Logger receives connection failures at debug level and accept
	// errors at warn level, each line with the attribute pool=<name>.
	// Nil means slog.Default().
	Logger *slog.Logger
}

// settings is a validated Config with its defaults applied: what one
// connection uses from its start to its end. Update swaps it whole.
type settings struct {
	cfg      Config
	log      *slog.Logger
	dialer   net.Dialer
	attempts int
	idle     time.Duration
	header   time.Duration
	limit    int64
	routes   map[string]*balancer.Pool // lower-case keys
	tls      *tls.Config
}

// newSettings validates cfg and applies its defaults; keys are the
// server's TLS session ticket keys.
func newSettings(cfg Config, keys [][32]byte) (*settings, error) {
	switch {
	case cfg.Pool == nil:
		return nil, errors.New("tcpproxy: Config.Pool is required")
	case cfg.DialTimeout < 0:
		return nil, errors.New("tcpproxy: DialTimeout must not be negative")
	case cfg.DialAttempts < 0:
		return nil, errors.New("tcpproxy: DialAttempts must not be negative")
	case cfg.MaxConnsPerBackend < 0:
		return nil, errors.New("tcpproxy: MaxConnsPerBackend must not be negative")
	case cfg.HeaderTimeout < 0:
		return nil, errors.New("tcpproxy: HeaderTimeout must not be negative")
	case cfg.ProxyProtocol > proxyproto.V2:
		return nil, fmt.Errorf("tcpproxy: ProxyProtocol %v is not none, v1 or v2", cfg.ProxyProtocol)
	}
	s := &settings{
		cfg:      cfg,
		attempts: orDefault(cfg.DialAttempts, DefaultDialAttempts),
		idle:     orDefault(cfg.IdleTimeout, DefaultIdleTimeout),
		header:   orDefault(cfg.HeaderTimeout, DefaultHeaderTimeout),
		limit:    int64(cfg.MaxConnsPerBackend),
	}
	for name, pool := range cfg.Routes {
		if pool == nil {
			return nil, fmt.Errorf("tcpproxy: Routes[%q] has no pool", name)
		}
		if s.routes == nil {
			s.routes = make(map[string]*balancer.Pool, len(cfg.Routes))
		}
		s.routes[strings.ToLower(strings.TrimSuffix(name, "."))] = pool
	}
	if cfg.TLS != nil {
		var err error
		if s.tls, err = loadTLS(cfg.TLS, keys); err != nil {
			return nil, err
		}
	}
	s.dialer.Timeout = orDefault(cfg.DialTimeout, DefaultDialTimeout)
	s.dialer.KeepAlive = keepAlive(cfg.KeepAlive)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s.log = log.With("pool", cfg.Pool.Name())
	return s, nil
}

// keepAlive maps Config.KeepAlive to the net package's KeepAlive fields,
// where zero means Go's default probes and negative none.
func keepAlive(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// orDefault returns v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Server is a layer-4 proxy: it accepts TCP connections, picks a backend
// from a [balancer.Pool], connects to it (another backend if that fails)
// and copies bytes both ways, with half-close, idle timeout, per-backend
// connection limits, PROXY protocol headers to backends and from clients,
// TLS routing or termination, and graceful drain. On Linux its
// connections run on event loops (see the package documentation).
//
// All methods are safe for concurrent use. Serve blocks until the server
// stops.
type Server struct {
	set  atomic.Pointer[settings]
	keys [][32]byte // TLS session ticket keys, kept across Updates

	counts sync.Map // netip.AddrPort → *atomic.Int64: open connections per backend

	g serve.Group[*conn]

	eng     engine // event loops for established connections
	fmu     sync.Mutex
	flows   map[*flow]struct{} // connections the loops own
	fidle   chan struct{}      // closed when flows empties
	fclosed bool               // no more flows: the server stopped
}

// New validates cfg and returns a server that is not yet serving.
func New(cfg Config) (*Server, error) {
	keys := newTicketKeys()
	st, err := newSettings(cfg, keys)
	if err != nil {
		return nil, err
	}
	s := &Server{keys: keys}
	s.set.Store(st)
	return s, nil
}

// Update replaces the server's configuration while it serves, atomically:
// each new connection uses either the old configuration or the new one,
// never a mix. Established connections keep the configuration they
// started with (their idle timeout, the header they sent) and are not
// interrupted. A new Pool is allowed: new connections pick from it. A new
// Logger applies to connections; accept errors of a Serve call already
// running keep the logger it started with. An invalid cfg returns an
// error and changes nothing.
func (s *Server) Update(cfg Config) error {
	st, err := newSettings(cfg, s.keys)
	if err != nil {
		return err
	}
	s.set.Store(st)
	return nil
}

// Config returns the configuration new connections use, as given to New
// or the last Update (zero fields stay zero).
func (s *Server) Config() Config { return s.set.Load().cfg }

// Pool returns the pool new connections pick from.
func (s *Server) Pool() *balancer.Pool { return s.set.Load().cfg.Pool }

// ListenAndServe listens on the TCP address addr and calls [Server.Serve].
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	if s.g.Closing() {
		return ErrServerClosed
	}
	lc := net.ListenConfig{KeepAlive: keepAlive(s.set.Load().cfg.KeepAlive)}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcpproxy: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln and proxies each until the server stops:
// by [Server.Shutdown], [Server.Close] or the end of ctx, which means the
// same as Close (the whole server stops now, connections included). It
// closes ln before returning. It returns nil when the server was stopped,
// [ErrServerClosed] when it was stopped before Serve was called, and an
// error when ln failed. Serve may be called for several listeners at
// once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.g.Closing() {
		ln.Close()
		return ErrServerClosed
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	if tl, ok := ln.(*net.TCPListener); ok {
		if fl := s.fastListener(tl); fl != nil {
			ln = fl
		}
	}
	err := s.g.Serve(ctx, ln, &serve.Config[*conn]{
		Name:      "tcpproxy",
		Closed:    errStopped,
		Logger:    s.set.Load().log,
		Temporary: temporary,
		Open: func(ctx context.Context, c net.Conn) *conn {
			cctx, cancel := context.WithCancel(ctx)
			return &conn{client: c, ctx: cctx, cancel: cancel}
		},
		Serve: s.handle,
	})
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		s.Close() // done by the AfterFunc too; here so it is over when Serve returns
		return nil
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	return err
}

// temporary reports accept errors worth retrying (out of file descriptors
// or memory, aborted handshakes).
func temporary(err error) bool {
	return serve.Temporary(err) || errors.Is(err, syscall.ENOMEM) || errors.Is(err, os.ErrDeadlineExceeded)
}

// Shutdown stops the server gracefully: it closes every listener at once
// (Serve returns nil), waits for open connections to finish by themselves
// until ctx ends, then closes those left and waits for their goroutines.
// It returns nil when every connection finished by itself and ctx.Err()
// otherwise. It does not close the pool. Shutdown may be called more than
// once, and before, during or after Serve.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.g.Shutdown(ctx, nil)
	if err2 := s.waitFlows(ctx); err == nil {
		err = err2
	}
	return err
}

// Close stops the server now: it closes every listener and connection
// (dials in progress are cancelled) and waits for the connections'
// goroutines. It does not close the pool. Close may be called more than
// once, and before, during or after Serve; it always returns nil.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.g.Shutdown(ctx, nil) // ctx.Err() when connections were open: expected
	_ = s.waitFlows(ctx)
	return nil
}

// BackendConns returns the number of connections this server holds open
// to addr.
func (s *Server) BackendConns(addr netip.AddrPort) int {
	if v, ok := s.counts.Load(addr); ok {
		return int(v.(*atomic.Int64).Load())
	}
	return 0
}
