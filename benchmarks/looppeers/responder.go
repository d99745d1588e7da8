// Package looppeers holds the benchmark peers that serve what
// redirect.Server serves in BenchmarkFrontEndRedirect on third-party
// event-loop libraries (cmd/gnetpeer on gnet, cmd/netpollpeer on
// netpoll), so that lbkit's own epoll loops can be measured against them
// on the same work (issue 16).
//
// Both commands share a [Responder]: the same request-head parser as
// redirect.Server (lbkit's internal/h1, with its smuggling rules), the
// same round-robin [balancer.Pool] pick, and the same answer bytes, so
// that only the event loop differs between the peers and lbkit. The
// Responder works on bytes a loop already holds and never blocks: the
// loop hands it what it has buffered, and it answers every whole request
// head in there.
//
// What it answers, as redirect.Server with a default Handler over a
// round-robin pool:
//
//   - GET and HEAD get 302 Found, other methods 307 Temporary Redirect,
//     with Location "http://backend/" followed by the target's path
//     (leading slashes collapsed, bytes outside the URL-safe set
//     percent-encoded) and query, Cache-Control: no-store, Date,
//     Content-Length: 0;
//   - a path with dot segments gets 400 with a body, the connection kept;
//   - a head the parser refuses, a request line or head longer than 16 KiB
//     (414, 431) and CONNECT get their status and "Connection: close";
//   - keep-alive as HTTP/1.1 (and HTTP/1.0 with "Connection: keep-alive")
//     lets it, "Connection: close" on the answer otherwise; pipelined
//     requests are answered in order;
//   - a request body of known length up to 64 KiB is skipped; a larger
//     one, a chunked one, or one the client holds back for 100 Continue is
//     answered with "Connection: close".
//
// Unlike redirect.Server, it answers a request before skipping its body
// (redirect.Server answers once the body is skipped; the bytes are the
// same), does not linger on close for unread body bytes, and sets no read
// or idle deadlines (netpollpeer sets netpoll's to redirect.Server's
// defaults): none of this happens in the benchmark.
package looppeers

import (
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/internal/h1"
)

// Limits, as redirect.Server's defaults.
const (
	// MaxHeadBytes caps a request head: redirect.DefaultMaxHeaderBytes.
	MaxHeadBytes = 16 << 10
	// MaxSkipBody is the largest request body skipped to keep a
	// connection.
	MaxSkipBody = 64 << 10
)

var bodyBadPath = []byte("redirect: path has dot segments\n")

// zeroTime asks h1.AppendDate for the current time.
var zeroTime time.Time

// Responder renders redirect.Server's answers. It is safe for concurrent
// use.
type Responder struct {
	pool  *balancer.Pool
	bases map[netip.AddrPort]string // "http://addr" per backend
	heads sync.Pool                 // *h1.Head
}

// NewResponder returns a Responder over a round-robin pool of backends.
func NewResponder(backends []netip.AddrPort) (*Responder, error) {
	if len(backends) == 0 {
		return nil, errors.New("looppeers: no backends")
	}
	pool, err := balancer.New(balancer.Config{Builder: roundrobin.Builder{}})
	if err != nil {
		return nil, err
	}
	r := &Responder{pool: pool, bases: map[netip.AddrPort]string{}}
	bs := make([]balancer.Backend, len(backends))
	for i, a := range backends {
		bs[i] = balancer.Backend{Addr: a}
		r.bases[a] = "http://" + a.String()
	}
	if err := pool.Set(bs); err != nil {
		pool.Close()
		return nil, err
	}
	r.heads.New = func() any { return new(h1.Head) }
	return r, nil
}

// Close closes the Responder's pool.
func (r *Responder) Close() error { return r.pool.Close() }

// Conn is what a Responder keeps per connection between calls: the
// request body bytes still to skip. Its zero value is a new connection's.
type Conn struct {
	skip int64
}

// Idle reports whether c holds nothing between calls, so a loop may drop
// it and start a zero Conn next time.
func (c *Conn) Idle() bool { return c.skip == 0 }

// Serve answers the whole request heads at the start of in, appending
// the answers to out. It returns out, the number of bytes of in consumed
// (heads and skipped body bytes; what is left is the start of a head to
// hand over again with more bytes), and whether the connection must be
// closed once out is written, when nothing more of in matters.
func (r *Responder) Serve(c *Conn, out, in []byte) (_ []byte, n int, closeConn bool) {
	var h *h1.Head
	defer func() {
		if h != nil {
			r.heads.Put(h)
		}
	}()
	for {
		if c.skip > 0 {
			k := int(min(c.skip, int64(len(in)-n)))
			n += k
			c.skip -= int64(k)
			if c.skip > 0 {
				return out, n, false
			}
		}
		if n == len(in) {
			return out, n, false
		}
		head, code := findHead(in[n:])
		if code != 0 {
			return appendError(out, code, []byte(http.StatusText(code)+"\n"), false), n, true
		}
		if head == nil {
			return out, n, false
		}
		if h == nil {
			h = r.heads.Get().(*h1.Head)
		}
		if code := h.Parse(head); code != 0 {
			return appendError(out, code, []byte(http.StatusText(code)+"\n"), false), n, true
		}
		n += len(head)
		var body int64
		switch {
		case h.Chunked, h.ExpectContinue:
			body = -1
		case h.ContentLength > 0:
			body = h.ContentLength
		}
		keep := h.KeepAlive() && body >= 0 && body <= MaxSkipBody
		out, keep = r.answer(h, out, keep)
		if !keep {
			return out, n, true
		}
		c.skip = body
	}
}

// findHead returns the whole request head at the start of in, nil when
// it has not arrived whole, or the status to refuse it with: 400 for a
// bare LF, 414 or 431 when it cannot fit MaxHeadBytes (h1.ReadHead's
// rules over a buffer of that size).
func findHead(in []byte) (head []byte, code int) {
	for i, c := range in {
		if i >= MaxHeadBytes {
			break
		}
		if c != '\n' {
			continue
		}
		if i == 0 || in[i-1] != '\r' {
			return nil, http.StatusBadRequest
		}
		if i >= 3 && in[i-2] == '\n' {
			return in[:i+1], 0
		}
	}
	if len(in) < MaxHeadBytes {
		return nil, 0
	}
	for _, c := range in[:MaxHeadBytes] {
		if c == '\n' {
			return nil, http.StatusRequestHeaderFieldsTooLarge
		}
	}
	return nil, http.StatusRequestURITooLong
}

// answer appends the answer to h and reports whether the connection
// stays open.
func (r *Responder) answer(h *h1.Head, out []byte, keep bool) ([]byte, bool) {
	path, query, hasQuery := "/", "", false
	if h.Target != "*" {
		if path = h.Path(); path == "" { // authority form: CONNECT
			return appendError(out, http.StatusBadRequest, []byte("Bad Request\n"), false), false
		}
		query, hasQuery = h.RawQuery()
	}
	e, err := r.pool.Pick(balancer.PickInfo{})
	if err != nil {
		return appendError(out, http.StatusServiceUnavailable, []byte("redirect: no backend available\n"), keep), keep
	}
	if h1.HasDotSegment(path) {
		return appendError(out, http.StatusBadRequest, bodyBadPath, keep), keep
	}
	code := http.StatusFound
	if h.Method != http.MethodGet && h.Method != http.MethodHead {
		code = http.StatusTemporaryRedirect
	}
	b := append(out, h1.StatusLine(code)...)
	b = append(b, "Location: "...)
	b = h1.AppendLocation(b, r.bases[e.Addr()], path, query, hasQuery)
	b = append(b, "\r\nCache-Control: no-store\r\n"...)
	b = h1.AppendDate(b, zeroTime)
	b = append(b, "Content-Length: 0\r\n"...)
	switch {
	case !keep:
		b = append(b, "Connection: close\r\n"...)
	case h.Minor == 0:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	return append(b, "\r\n"...), keep
}

// appendError appends an error answer with body, closing the connection
// unless keep.
func appendError(b []byte, code int, body []byte, keep bool) []byte {
	b = append(b, h1.StatusLine(code)...)
	b = append(b, "Cache-Control: no-store\r\n"...)
	if code == http.StatusServiceUnavailable {
		b = append(b, "Retry-After: 1\r\n"...)
	}
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"...)
	b = h1.AppendDate(b, zeroTime)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}
