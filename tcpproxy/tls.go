package tcpproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// TLS configures TLS termination: the proxy completes the handshake with
// the client and forwards the decrypted stream to the backend. Files are
// read by [New] and again by every [Server.Update], which is how
// certificates are reloaded; connections already established keep theirs.
type TLS struct {
	// Certificates are the certificate chains the proxy serves, each a
	// pair of PEM files. The client's server name (SNI) picks among them
	// (by the names of their leaves); a client without a matching name
	// gets the first. At least one is required.
	Certificates []CertFiles
	// NextProtos lists the ALPN protocols offered to clients, in order of
	// preference ("h2", "http/1.1"). The protocol agreed is passed on to
	// the backend in the PROXY v2 header (type ALPN) when ProxyProtocol
	// is V2, as is the server name (type AUTHORITY). Empty means no ALPN.
	NextProtos []string
	// MinVersion is the lowest TLS version accepted. Zero means TLS 1.2.
	MinVersion uint16
}

// CertFiles names a certificate chain and its private key, PEM encoded.
type CertFiles struct {
	CertFile, KeyFile string
}

// errPeeked ends the handshake peekHello starts once it has the
// ClientHello.
var errPeeked = errors.New("tcpproxy: ClientHello read")

// loadTLS reads t's certificates and returns the server configuration,
// with the ticket keys the server keeps across reloads so that sessions
// resume after an Update.
func loadTLS(t *TLS, keys [][32]byte) (*tls.Config, error) {
	if len(t.Certificates) == 0 {
		return nil, errors.New("tcpproxy: TLS needs at least one certificate")
	}
	cfg := &tls.Config{
		NextProtos: t.NextProtos,
		MinVersion: orDefault(t.MinVersion, tls.VersionTLS12),
	}
	for _, f := range t.Certificates {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tcpproxy: TLS certificate %s: %w", f.CertFile, err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	cfg.SetSessionTicketKeys(keys)
	return cfg, nil
}

// newTicketKeys returns the server's session ticket key.
func newTicketKeys() [][32]byte {
	var k [32]byte
	rand.Read(k[:])
	return [][32]byte{k}
}

// route returns the pool for serverName: an exact key of routes, else a
// wildcard key ("*.example.com" for "www.example.com"), else def. Keys are
// matched without regard to case.
func route(routes map[string]*balancer.Pool, serverName string, def *balancer.Pool) *balancer.Pool {
	if len(routes) == 0 || serverName == "" {
		return def
	}
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	if p, ok := routes[name]; ok {
		return p
	}
	if _, rest, ok := strings.Cut(name, "."); ok {
		if p, ok := routes["*."+rest]; ok {
			return p
		}
	}
	return def
}

// peekHello reads the client's TLS ClientHello from r (which reads the
// client connection c) within timeout, and returns the server name it
// asks for and every byte read, which the backend must get first. It
// parses with crypto/tls, so a hello split over several records is read
// whole. A client that does not speak TLS gets an empty name, with the
// bytes read so far; an error means the client failed or was too slow.
func peekHello(c net.Conn, r io.Reader, timeout time.Duration) (string, []byte, error) {
	rec := &recorder{Conn: c, r: r}
	var name string
	srv := tls.Server(rec, &tls.Config{
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			name = hi.ServerName
			return nil, errPeeked
		},
	})
	c.SetReadDeadline(time.Now().Add(timeout))
	err := srv.HandshakeContext(context.Background())
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return "", nil, err
	}
	switch {
	case errors.Is(err, errPeeked):
		return name, rec.buf.Bytes(), nil
	case rec.err != nil && !errors.Is(rec.err, io.EOF) || rec.buf.Len() == 0:
		return "", nil, fmt.Errorf("tcpproxy: client's TLS ClientHello: %w", err)
	}
	// Not TLS (or not a hello): the bytes go on as they came.
	return "", rec.buf.Bytes(), nil
}

// recorder is a connection whose reads (from r) are kept and whose writes
// (the alert crypto/tls sends when peekHello ends the handshake) are
// dropped.
type recorder struct {
	net.Conn
	r   io.Reader
	buf bytes.Buffer
	err error // the first read error
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf.Write(p[:n])
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *recorder) Write(p []byte) (int, error) { return len(p), nil }
