package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// maxHTTPBody bounds how much of a response body HTTP reads to look for
// BodyContains.
const maxHTTPBody = 64 << 10

// HTTP checks a target with one HTTP/1.1 request. Each probe opens a new
// connection and closes it after the response ("Connection: close"), as
// HAProxy does: a reused keep-alive connection would hide a server that no
// longer accepts connections, and nothing is left idle between probes.
// A server that accepts and then hangs fails the probe when its context
// times out. The zero value sends "GET /" over plain HTTP and wants a
// status from 200 to 399.
type HTTP struct {
	// Method is the request method. Empty means GET.
	Method string
	// Path is the request target, with an optional query. Empty means
	// "/".
	Path string
	// Host is the Host header, and the TLS server name unless TLSConfig
	// sets one. Empty means the target's address.
	Host string
	// Scheme is "http" or "https". Empty means "https" if TLSConfig is
	// set, else "http".
	Scheme string
	// StatusMin and StatusMax bound the acceptable status codes. Zero
	// means 200 and 399.
	StatusMin, StatusMax int
	// BodyContains, if set, must appear in the first 64 KiB of the
	// response body.
	BodyContains string
	// TLSConfig configures HTTPS. Nil means the system roots and the
	// server name from Host or the target's IP address. It is cloned,
	// never modified.
	TLSConfig *tls.Config
	// AgentHeader, if set, names a response header (such as
	// "X-Agent-State") whose value holds agent words, parsed by
	// [ParseAgent] into the probe's Report. Unknown words are ignored.
	AgentHeader string
}

// Probe sends the request to addr over a new connection and checks the
// response. It blocks until the response is checked or ctx is done, and
// is safe for concurrent use. The Report holds the agent words of the
// response, also when the status or body fails the check.
func (h HTTP) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	scheme := h.Scheme
	if scheme == "" {
		scheme = "http"
		if h.TLSConfig != nil {
			scheme = "https"
		}
	}
	if scheme != "http" && scheme != "https" {
		return Report{}, fmt.Errorf("health: http probe: unknown scheme %q", scheme)
	}
	host := h.Host
	if host == "" {
		host = addr.String()
	}
	path := h.Path
	if path == "" {
		path = "/"
	}
	method := h.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+host+path, nil)
	if err != nil {
		return Report{}, fmt.Errorf("health: http probe: %w", err)
	}
	req.Close = true
	req.Header.Set("User-Agent", "lbkit-health/1")

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return Report{}, fmt.Errorf("health: http probe: %w", err)
	}
	defer conn.Close()
	stop := bindDeadline(ctx, conn)
	defer stop()
	if scheme == "https" {
		cfg := &tls.Config{}
		if h.TLSConfig != nil {
			cfg = h.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = addr.Addr().String()
			if h.Host != "" {
				cfg.ServerName = hostOnly(h.Host)
			}
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return Report{}, fmt.Errorf("health: https probe: %w", ctxErr(ctx, err))
		}
		conn = tc
	}
	if err := req.Write(conn); err != nil {
		return Report{}, fmt.Errorf("health: http probe: %w", ctxErr(ctx, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return Report{}, fmt.Errorf("health: http probe: %w", ctxErr(ctx, err))
	}
	defer resp.Body.Close()

	var rep Report
	if h.AgentHeader != "" {
		if v := resp.Header.Get(h.AgentHeader); v != "" {
			rep, _ = ParseAgent(v)
		}
	}
	lo, hi := h.StatusMin, h.StatusMax
	if lo == 0 {
		lo = 200
	}
	if hi == 0 {
		hi = 399
	}
	if resp.StatusCode < lo || resp.StatusCode > hi {
		return rep, fmt.Errorf("%w: http probe: status %d not in %d-%d", ErrMismatch, resp.StatusCode, lo, hi)
	}
	if h.BodyContains != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
		if err != nil {
			return rep, fmt.Errorf("health: http probe: body: %w", ctxErr(ctx, err))
		}
		if !bytes.Contains(body, []byte(h.BodyContains)) {
			return rep, fmt.Errorf("%w: http probe: body does not contain %q", ErrMismatch, h.BodyContains)
		}
	}
	return rep, nil
}

// hostOnly strips a port from a Host header value.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}
