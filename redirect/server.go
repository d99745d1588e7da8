package redirect

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/lbkit/lbkit/internal/serve"
)

// Defaults for [Server] fields left zero.
const (
	DefaultReadTimeout    = 10 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
	DefaultMaxHeaderBytes = 16 << 10
)

// ErrServerClosed is returned by [Server.Serve] after [Server.Shutdown].
var ErrServerClosed = errors.New("redirect: server closed")

// Server answers HTTP/1.1 requests with a [Handler]'s redirects without
// net/http: a purpose-built responder that reads only the request line and
// the headers the handler uses, writes the response straight into a
// per-connection buffer and does not allocate per request. It answers
// exactly what [Handler.ServeHTTP] answers for the same request, and is
// stricter than net/http about what it accepts:
//
//   - request lines and header lines must end in CRLF; obsolete line
//     folding, white space before a header's colon, control characters,
//     a missing or repeated Host in HTTP/1.1, conflicting Content-Length
//     values and versions other than HTTP/1.0 and 1.1 get 400 (or 505)
//     and the connection is closed;
//   - request bodies are never interpreted: a body of known length up to
//     64 KiB is skipped so the connection can be reused, anything else
//     (chunked, larger, or Content-Length with Transfer-Encoding) is
//     answered with "Connection: close", after which the server stops
//     reading the request, so no body byte is ever taken for a request;
//   - a request head (request line and headers) longer than
//     MaxHeaderBytes gets 414 if the request line alone does not fit, 431
//     otherwise.
//
// Use [Handler] with net/http when you need TLS, HTTP/2 or middleware;
// use Server for the highest request rate on plain HTTP/1.1.
//
// Serve, Shutdown and ListenAndServe are safe for concurrent use. The
// exported fields must not change after Serve is first called.
type Server struct {
	// Handler makes the decisions. Required.
	Handler *Handler
	// ReadTimeout bounds the time to receive one request's line and
	// headers once its first byte arrived. Zero means DefaultReadTimeout.
	ReadTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request line and headers together; it is
	// the size of each connection's read buffer, which holds a whole
	// request head while it is answered. Zero means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Logger receives accept errors. Nil means slog.Default().
	Logger *slog.Logger

	g serve.Group[net.Conn]
}

func (s *Server) readTimeout() time.Duration {
	if s.ReadTimeout > 0 {
		return s.ReadTimeout
	}
	return DefaultReadTimeout
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

// ListenAndServe listens on the TCP address addr and calls [Server.Serve].
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := serve.Listen(ctx, "redirect", addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln and answers their requests until ctx
// ends (it then closes ln and every open connection of the server, and
// returns ctx.Err()), [Server.Shutdown] is called ([ErrServerClosed]) or
// ln fails. It closes ln before returning. Connection goroutines may
// outlive Serve by the time they take to notice; Shutdown waits for them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Handler == nil {
		ln.Close()
		return errors.New("redirect: Server.Handler is nil")
	}
	return s.g.Serve(ctx, ln, &serve.Config[net.Conn]{
		Name:   "redirect",
		Closed: ErrServerClosed,
		Logger: s.Logger,
		Open:   func(_ context.Context, c net.Conn) net.Conn { return c },
		Serve:  s.serveConn,
	})
}

// Shutdown stops the server gracefully: it closes the listeners, lets
// each connection finish the request it is answering and closes it
// instead of waiting for another, and waits for them until ctx ends, when
// it closes those left. It returns nil, or ctx.Err() if it had to force.
func (s *Server) Shutdown(ctx context.Context) error {
	// Wake connections waiting for a request; one in the middle of a
	// request finishes it first (it checks closing before reading on).
	return s.g.Shutdown(ctx, func(c net.Conn) { c.SetReadDeadline(time.Now()) })
}

// srvConn is the per-connection state of a Server.
type srvConn struct {
	s       *Server
	c       net.Conn
	br      *bufio.Reader
	out     []byte
	peer    netip.Addr
	xff     [4]string // the last X-Forwarded-For lines of a request
	nxff    int
	cookies [8]string // the first Cookie lines of a request
	ncookie int
	linger  bool      // unread request body may follow the last response
	now     time.Time // when the current batch of requests arrived
}

// request is what the server reads of one request.
type request struct {
	method, target string
	http10         bool
	keepAlive      bool
	bodyLen        int64 // -1: unknown (chunked or conflicting): close after answering
	headLen        int   // bytes of the request head in the read buffer
}

// Status codes the server answers with on its own.
const (
	statusHeaderTooLarge = http.StatusRequestHeaderFieldsTooLarge
	statusVersion        = http.StatusHTTPVersionNotSupported
)

// errClose marks a request the server answers and then closes the
// connection on, with the status to send.
type errClose int

func (e errClose) Error() string { return strconv.Itoa(int(e)) }

const (
	maxSkipBody   = 64 << 10 // request bodies skipped to keep a connection
	maxPendingOut = 16 << 10 // answers buffered before a forced write
)

func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	size := s.MaxHeaderBytes
	if size <= 0 {
		size = DefaultMaxHeaderBytes
	}
	sc := &srvConn{s: s, c: c, br: bufio.NewReaderSize(c, size), out: make([]byte, 0, 1024)}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		sc.peer = ta.AddrPort().Addr().Unmap()
	} else if c.RemoteAddr() != nil {
		sc.peer = parseHostAddr(c.RemoteAddr().String())
	}
	readTimeout, idleTimeout := s.readTimeout(), s.idleTimeout()
	for {
		if s.g.Closing() {
			return
		}
		if sc.br.Buffered() == 0 {
			// Bound the flush and the wait for the next request, then
			// look at closing again: Shutdown may have set its own
			// deadline just before ours replaced it.
			c.SetDeadline(time.Now().Add(idleTimeout))
			if s.g.Closing() {
				return
			}
			if len(sc.out) > 0 {
				if _, err := c.Write(sc.out); err != nil {
					return
				}
				sc.out = sc.out[:0]
			}
			if _, err := sc.br.Peek(1); err != nil {
				return
			}
			sc.now = time.Now() // the request's arrival: Date and the read deadline
			c.SetReadDeadline(sc.now.Add(readTimeout))
		}
		if len(sc.out) >= maxPendingOut {
			// A client pipelining without reading: push answers out
			// rather than buffer them without bound.
			if _, err := c.Write(sc.out); err != nil {
				return
			}
			sc.out = sc.out[:0]
		}
		keep, err := sc.step(s.g.Closing())
		if !keep {
			if len(sc.out) > 0 {
				c.Write(sc.out)
			}
			if err == nil && sc.linger {
				lingerClose(c, sc.br)
			}
			return
		}
	}
}

// step reads one request and renders its answer into sc.out. It reports
// whether the connection stays open; when it does not, sc.out holds what
// is left to send and sc.linger whether unread body bytes may follow.
func (sc *srvConn) step(closing bool) (keep bool, err error) {
	req, err := sc.readRequest()
	if err != nil {
		var ec errClose
		if errors.As(err, &ec) && !closing {
			sc.writeError(int(ec))
		}
		return false, err
	}
	keep = req.keepAlive && req.bodyLen >= 0 && req.bodyLen <= maxSkipBody && !closing
	keep = sc.answer(req, keep) // the request's strings die here
	sc.br.Discard(req.headLen)
	if !keep {
		sc.linger = req.bodyLen != 0
		return false, nil
	}
	if req.bodyLen > 0 {
		if _, err := sc.br.Discard(int(req.bodyLen)); err != nil {
			return false, err
		}
	}
	return true, nil
}

// lingerClose half-closes c and reads what the client still sends for a
// short while, so the response is not lost to a reset caused by unread
// request data.
func lingerClose(c net.Conn, br *bufio.Reader) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, br, 256<<10)
}

// bstr views b as a string without copying. The string is valid until the
// reader's buffer is reused, which happens only after the response to the
// request is in sc.out.
func bstr(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// readHead waits until a whole request head (through its empty line) is
// buffered and returns it, without consuming it. Parsing only a fully
// buffered head matters: the strings taken from it point into the
// reader's buffer, which a later read could slide.
func (sc *srvConn) readHead() ([]byte, error) {
	checked := 0
	for {
		buf, _ := sc.br.Peek(sc.br.Buffered())
		for i := checked; i < len(buf); i++ {
			if buf[i] != '\n' {
				continue
			}
			if i == 0 || buf[i-1] != '\r' {
				return nil, errClose(http.StatusBadRequest) // bare LF
			}
			if i >= 3 && buf[i-2] == '\n' {
				return buf[:i+1], nil
			}
		}
		checked = len(buf)
		if len(buf) >= sc.br.Size() {
			if bytes.IndexByte(buf, '\n') < 0 {
				return nil, errClose(http.StatusRequestURITooLong)
			}
			return nil, errClose(statusHeaderTooLarge)
		}
		if _, err := sc.br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// readRequest reads and validates one request head. The request's strings
// point into the read buffer: use them before calling sc.br again, and
// consume the head with Discard(req.headLen).
func (sc *srvConn) readRequest() (request, error) {
	head, err := sc.readHead()
	if err != nil {
		return request{}, err
	}
	end := bytes.Index(head, []byte("\r\n"))
	req, ok := parseRequestLine(head[:end])
	if !ok {
		return request{}, errClose(http.StatusBadRequest)
	}
	req.headLen = len(head)
	if req.http10 && req.method == "" {
		return request{}, errClose(statusVersion)
	}
	rest := head[end+2:]
	req.keepAlive = !req.http10
	sc.nxff, sc.ncookie = 0, 0
	hosts := 0
	var te, expect bool
	req.bodyLen = 0
	clSeen := false
	for {
		i := bytes.Index(rest, []byte("\r\n"))
		h := rest[:i]
		rest = rest[i+2:]
		if len(h) == 0 {
			break
		}
		if h[0] == ' ' || h[0] == '\t' {
			return request{}, errClose(http.StatusBadRequest) // obsolete folding
		}
		colon := -1
		for i, c := range h {
			if c == ':' {
				colon = i
				break
			}
			if !tokenChar[c] {
				return request{}, errClose(http.StatusBadRequest)
			}
		}
		if colon <= 0 {
			return request{}, errClose(http.StatusBadRequest)
		}
		name, value := h[:colon], trimOWS(h[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return request{}, errClose(http.StatusBadRequest)
			}
		}
		switch {
		case equalFoldASCII(name, "host"):
			hosts++
		case equalFoldASCII(name, "cookie"):
			if sc.ncookie < len(sc.cookies) {
				sc.cookies[sc.ncookie] = bstr(value)
				sc.ncookie++
			}
		case equalFoldASCII(name, "x-forwarded-for"):
			if sc.nxff == len(sc.xff) { // keep the last lines: the nearest hops
				copy(sc.xff[:], sc.xff[1:])
				sc.nxff--
			}
			sc.xff[sc.nxff] = bstr(value)
			sc.nxff++
		case equalFoldASCII(name, "content-length"):
			n, ok := parseContentLength(value)
			if !ok || (clSeen && n != req.bodyLen) {
				return request{}, errClose(http.StatusBadRequest)
			}
			clSeen, req.bodyLen = true, n
		case equalFoldASCII(name, "transfer-encoding"):
			te = true
		case equalFoldASCII(name, "expect"):
			expect = true
		case equalFoldASCII(name, "connection"):
			if hasToken(value, "close") {
				req.keepAlive = false
			} else if req.http10 && hasToken(value, "keep-alive") {
				req.keepAlive = true
			}
		}
	}
	if !req.http10 && hosts != 1 {
		return request{}, errClose(http.StatusBadRequest)
	}
	if te {
		if req.http10 || clSeen {
			return request{}, errClose(http.StatusBadRequest) // smuggling shape
		}
		req.bodyLen = -1
	}
	if expect && req.bodyLen > 0 {
		// The client waits for 100 Continue, which never comes: answer
		// and close rather than wait for a body it may never send.
		req.bodyLen = -1
	}
	return req, nil
}

// parseRequestLine splits "METHOD SP target SP HTTP/1.x". An unsupported
// version is reported as http10 with an empty method.
func parseRequestLine(line []byte) (request, bool) {
	sp1 := -1
	for i, c := range line {
		if c == ' ' {
			sp1 = i
			break
		}
		if !tokenChar[c] {
			return request{}, false
		}
	}
	if sp1 <= 0 {
		return request{}, false
	}
	rest := line[sp1+1:]
	sp2 := -1
	for i, c := range rest {
		if c == ' ' {
			sp2 = i
			break
		}
		if c < 0x21 || c == 0x7f {
			return request{}, false
		}
	}
	if sp2 <= 0 {
		return request{}, false
	}
	version := rest[sp2+1:]
	req := request{method: bstr(line[:sp1]), target: bstr(rest[:sp2])}
	switch string(version) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		req.http10 = true
	default:
		if len(version) == 8 && string(version[:5]) == "HTTP/" && version[6] == '.' {
			return request{http10: true}, true // well-formed, unsupported
		}
		return request{}, false
	}
	return req, true
}

// splitTarget returns the path and query of a request target in origin,
// absolute or asterisk form. ok is false for other forms.
func splitTarget(t string) (path, query string, hasQuery, ok bool) {
	switch {
	case t == "*":
		return "/", "", false, true
	case len(t) > 0 && t[0] == '/':
	case hasPrefixFold(t, "http://") || hasPrefixFold(t, "https://"):
		// Absolute form: the authority is dropped, never used.
		i := len("http://")
		if t[4] == 's' || t[4] == 'S' {
			i++
		}
		j := i
		for j < len(t) && t[j] != '/' && t[j] != '?' {
			j++
		}
		t = t[j:]
		if t == "" || t[0] == '?' {
			t = "/" + t // rare; allocates
		}
	default:
		return "", "", false, false
	}
	for i := 0; i < len(t); i++ {
		if t[i] == '?' {
			return t[:i], t[i+1:], true, true
		}
	}
	return t, "", false, true
}

// answer renders the handler's decision for req into sc.out and reports
// whether the connection stays open.
func (sc *srvConn) answer(req request, keep bool) bool {
	h := sc.s.Handler
	path, query, hasQuery, ok := splitTarget(req.target)
	if !ok {
		sc.writeError(http.StatusBadRequest)
		return false
	}
	d := h.decide(req.method, path, query, hasQuery, sc.peer, sc.xff[:sc.nxff], sc.cookies[:sc.ncookie])
	b := sc.out
	switch {
	case d.fallback:
		b = appendStatus(b, d.code)
		b = append(b, "Location: "...)
		b = append(b, h.fallback[0]...)
		b = append(b, "\r\n"...)
	case d.t == nil:
		sc.out = b
		sc.writeErrorKeep(d.code, errorBody(d.code), keep)
		return keep
	default:
		b = appendStatus(b, d.code)
		b = append(b, "Location: "...)
		b = appendLocation(b, d.t.base, path, query, hasQuery)
		b = append(b, "\r\n"...)
		if d.setCookie {
			b = append(b, "Set-Cookie: "...)
			b = append(b, d.t.setCookie[0]...)
			b = append(b, "\r\n"...)
		}
		if h.links > 0 {
			if l := h.duplicateLinks(d.snap, d.t, path, query, hasQuery); l != "" {
				b = append(b, "Link: "...)
				b = append(b, l...)
				b = append(b, "\r\n"...)
			}
		}
	}
	b = append(b, "Cache-Control: "...)
	b = append(b, h.cacheControl[0]...)
	b = append(b, "\r\n"...)
	if h.vary != nil {
		b = append(b, "Vary: Cookie\r\n"...)
	}
	b = appendDate(b, sc.now)
	b = append(b, "Content-Length: 0\r\n"...)
	b = appendConnection(b, req, keep)
	sc.out = append(b, "\r\n"...)
	return keep
}

func appendConnection(b []byte, req request, keep bool) []byte {
	switch {
	case !keep:
		return append(b, "Connection: close\r\n"...)
	case req.http10:
		return append(b, "Connection: keep-alive\r\n"...)
	}
	return b
}

// writeError renders an error the server found itself (a malformed
// request), in a response that closes the connection.
func (sc *srvConn) writeError(code int) {
	sc.writeErrorKeep(code, []byte(http.StatusText(code)+"\n"), false)
}

// writeErrorKeep renders an error response with body, closing the
// connection unless keep.
func (sc *srvConn) writeErrorKeep(code int, body []byte, keep bool) {
	b := appendStatus(sc.out, code)
	b = append(b, "Cache-Control: "...)
	if code == http.StatusServiceUnavailable {
		b = append(b, "no-store\r\nRetry-After: "...)
		b = append(b, sc.s.Handler.retryAfter[0]...)
	} else {
		b = append(b, sc.s.Handler.cacheControl[0]...)
	}
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"...)
	b = appendDate(b, sc.now)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	sc.out = append(b, body...)
}

// statusLines holds the status line of every status the server sends.
var statusLines = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{301, 302, 303, 307, 308, 400, 414, 431, 503, 505} {
		m[c] = "HTTP/1.1 " + strconv.Itoa(c) + " " + http.StatusText(c) + "\r\n"
	}
	return m
}()

func appendStatus(b []byte, code int) []byte { return append(b, statusLines[code]...) }

// appendLocation appends the Location buildLocation would return.
func appendLocation(b []byte, base, path, query string, hasQuery bool) []byte {
	b = append(b, base...)
	b = append(b, '/')
	b = appendEscapedBytes(b, trimSlashes(path), &pathSafe)
	if hasQuery {
		b = append(b, '?')
		b = appendEscapedBytes(b, query, &querySafe)
	}
	return b
}

func trimSlashes(p string) string {
	for len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	return p
}

// dateCache holds the Date header line for the current second.
var dateCache atomic.Pointer[dateLine]

type dateLine struct {
	sec  int64
	line []byte
}

// appendDate appends "Date: <IMF-fixdate>\r\n" for now (the zero time
// means the current time), formatting at most once a second.
func appendDate(b []byte, now time.Time) []byte {
	if now.IsZero() {
		now = time.Now()
	}
	// Only move forward: connections whose batch arrived a second ago
	// reuse the newer line instead of reformatting back and forth.
	d := dateCache.Load()
	if d == nil || now.Unix() > d.sec {
		line := now.UTC().AppendFormat([]byte("Date: "), http.TimeFormat)
		d = &dateLine{sec: now.Unix(), line: append(line, "\r\n"...)}
		dateCache.Store(d)
	}
	return append(b, d.line...)
}

// tokenChar marks the characters of an RFC 9110 token.
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFoldASCII reports whether b equals the lower-case ASCII string s,
// ignoring case.
func equalFoldASCII[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && equalFoldASCII(s[:len(prefix)], prefix)
}

// hasToken reports whether the comma-separated list v holds token tok
// (lower case), ignoring case.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		if equalFoldASCII(trimOWS(v[:i]), tok) {
			return true
		}
		if i == len(v) {
			break
		}
		v = v[i+1:]
	}
	return false
}

// parseContentLength parses a Content-Length value: digits only.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
