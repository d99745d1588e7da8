package proxy

import (
	"net/http"
	"time"
)

// Defaults of [NewServer].
const (
	// ServerReadHeaderTimeout bounds reading a client's request head
	// (slowloris).
	ServerReadHeaderTimeout = 10 * time.Second
	// ServerIdleTimeout closes idle client keep-alive connections.
	ServerIdleTimeout = 120 * time.Second
	// ServerMaxHeaderBytes caps a client's request head; larger ones get
	// 431 Request Header Fields Too Large from net/http.
	ServerMaxHeaderBytes = 64 << 10
)

// NewServer returns an [http.Server] for a proxy handler h (usually an
// [*HTTP], perhaps wrapped in middleware) with defaults fit for facing
// clients: ReadHeaderTimeout ServerReadHeaderTimeout, IdleTimeout
// ServerIdleTimeout, MaxHeaderBytes ServerMaxHeaderBytes, and HTTP/1.1
// plus HTTP/2 (over TLS, and unencrypted "h2c" with prior knowledge).
// ReadTimeout and WriteTimeout stay zero so long uploads, downloads and
// streams are not cut; bound them with HTTPConfig.RequestTimeout.
//
// net/http's server does part of the request-side smuggling defences: it
// rejects (400) heads with invalid bytes in names or values, several
// differing Content-Length values and Transfer-Encoding other than a
// single "chunked", and for a message with both Transfer-Encoding:
// chunked and Content-Length it follows RFC 9112 6.3 — the chunked
// framing wins and Content-Length is dropped — so the proxy forwards it
// chunked and never ambiguously. It does not reject obsolete line
// folding: it unfolds a folded value into one line, which the proxy
// forwards unfolded. Set Addr (and TLSConfig) and call ListenAndServe, Serve or
// ServeTLS; stop it with Shutdown, which lets requests in flight finish.
// For plain HTTP/1.1 clients, [Server] serves the same handler faster and
// refuses Content-Length with Transfer-Encoding and obs-fold outright
// (400).
func NewServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ServerReadHeaderTimeout,
		IdleTimeout:       ServerIdleTimeout,
		MaxHeaderBytes:    ServerMaxHeaderBytes,
		Protocols:         &p,
	}
}
