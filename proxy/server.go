package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/evloop"
	"github.com/lbkit/lbkit/internal/h1"
	"github.com/lbkit/lbkit/internal/serve"
)

// Defaults for [ServerConfig] fields left zero.
const (
	DefaultServerReadTimeout = 10 * time.Second
	DefaultServerIdleTimeout = 2 * time.Minute
	DefaultServerMaxHeader   = 16 << 10
	// DefaultServerBodyIdleTimeout is nginx's client_body_timeout.
	DefaultServerBodyIdleTimeout = 30 * time.Second
)

// ErrServerClosed is returned by [Server.Serve] called after the server
// was stopped (Shutdown, Close or the end of an earlier Serve's context).
var ErrServerClosed = errors.New("proxy: server closed")

// Server serves HTTP/1.1 clients with an [HTTP] proxy without net/http's
// server. On Linux, on a TCP listener, it runs an event engine: a few
// event loops, one per CPU, wait in epoll for the client and backend
// sockets (raw descriptors, registered once), with backend keep-alive
// connections kept per loop; no goroutine per connection or request, and
// an idle connection holds no buffer (see [Server.Serve]). Elsewhere, and
// for requests the loops leave to it, it runs a goroutine per client
// connection only while it has a request in flight. Both use a strict
// request parser and write responses from the backend's bytes straight
// into the client's buffer. The forwarding itself — picking,
// retries, limits and queue, passive health, sticky cookies, forwarding
// headers, hop-by-hop stripping, 502/503/504 — is the handler's, shared
// with [HTTP.ServeHTTP]. Use [HTTP] under net/http for TLS, HTTP/2 and
// middleware; use Server for the highest request rate on plain HTTP/1.1.
//
// It is stricter than net/http about what it accepts. Request heads are
// parsed by the HTTP/1.1 codec it shares with redirect.Server; each of
// these gets its status and the connection is closed, and nothing
// reaches a backend:
//
//   - 400: a line not ending in CRLF (bare LF), obsolete line folding,
//     white space before a header's colon, invalid bytes in the method,
//     target, names or values, a missing or repeated Host in HTTP/1.1,
//     differing or invalid Content-Length values, Content-Length together
//     with Transfer-Encoding, Transfer-Encoding in HTTP/1.0;
//   - 501: a transfer coding other than a single "chunked";
//   - 417: an expectation other than 100-continue;
//   - 414 if the request line alone does not fit MaxHeaderBytes, 431 if
//     the head does not;
//   - 505: versions other than HTTP/1.0 and HTTP/1.1.
//
// Supported: keep-alive and pipelining (answers to pipelined requests go
// out in one write), request bodies with Content-Length or chunked,
// streamed to the backend with its trailers, Expect:
// 100-continue (the interim answer is sent when the proxy starts reading
// the body), response bodies of any framing (re-chunked for HTTP/1.1
// clients when the backend's length is unknown, with its trailers;
// delimited by close for HTTP/1.0), streaming responses (SSE) flushed as
// they arrive, and upgrades (WebSocket) through the handler's tunnel.
// CONNECT is answered 405, as by the handler.
//
// Unlike net/http, the server does not read from a client while its
// request waits for a backend. On the event loops a client whose
// connection is reset, or shut both ways, is noticed at once and its
// backend request abandoned; one that only sends its FIN (as a client
// that half-closes after its request does) still gets its answer. On the
// goroutine path a client that goes away is noticed when its response is
// written. Either way the request runs at most until the backend answers
// or HTTPConfig.ResponseHeaderTimeout passes. There is no write timeout;
// bound requests with HTTPConfig.RequestTimeout.
//
// Make one with [NewServer]. Serve, ListenAndServe, Shutdown and Close
// are safe for concurrent use. The server never closes its handler nor
// the handler's pool.
type Server struct {
	cfg    ServerConfig // defaults filled in
	g      serve.Group[*clientConn]
	pool   sync.Pool // *srvConn
	brPool sync.Pool // *bufio.Reader of MaxHeaderBytes
	bwPool sync.Pool // *bufio.Writer

	park evloop.Parking[clientConn] // idle connections of the goroutine path

	eng      engine // the event loops of TCP listeners (Linux)
	noEngine bool   // tests: the goroutine path only
}

// ServerConfig configures a [Server]. Only Handler is required; every
// other field has a useful zero value, documented on the field.
type ServerConfig struct {
	// Handler forwards the requests. Required.
	Handler *HTTP
	// ReadTimeout bounds the time to receive a request head once its
	// first byte arrived. Zero means DefaultServerReadTimeout.
	ReadTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection. The deadline is moved lazily, so an idle connection may
	// be closed up to an eighth of IdleTimeout early. Zero means
	// DefaultServerIdleTimeout.
	IdleTimeout time.Duration
	// BodyIdleTimeout bounds the wait for each read of a request body:
	// a client that stops sending its body for this long is disconnected
	// (and the backend's request aborted). It bounds the time between
	// body bytes, not the whole upload (see HTTPConfig.RequestTimeout),
	// and does not apply to upgraded connections (WebSocket). Zero means
	// DefaultServerBodyIdleTimeout; negative means no limit.
	BodyIdleTimeout time.Duration
	// MaxHeaderBytes caps the request line and headers together; it is
	// the size of each connection's read buffer. Zero means
	// DefaultServerMaxHeader.
	MaxHeaderBytes int
	// Logger receives accept errors. Nil means slog.Default().
	Logger *slog.Logger
}

// NewServer validates cfg and returns a server; nothing runs until
// [Server.Serve].
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("proxy: ServerConfig.Handler is required")
	}
	if cfg.ReadTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 {
		return nil, errors.New("proxy: ServerConfig timeouts and sizes must not be negative")
	}
	cfg.ReadTimeout = orDur(cfg.ReadTimeout, DefaultServerReadTimeout)
	cfg.IdleTimeout = orDur(cfg.IdleTimeout, DefaultServerIdleTimeout)
	cfg.BodyIdleTimeout = orDur(cfg.BodyIdleTimeout, DefaultServerBodyIdleTimeout)
	cfg.MaxHeaderBytes = orInt(cfg.MaxHeaderBytes, DefaultServerMaxHeader)
	return &Server{cfg: cfg}, nil
}

// ListenAndServe listens on the TCP address addr and calls [Server.Serve].
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := serve.Listen(ctx, "proxy", addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln and serves their requests until ctx
// ends, [Server.Shutdown] or [Server.Close] is called, or ln fails. It
// closes ln before returning. The end of ctx means Close: ln and every
// open client connection are closed at once. Serve returns nil when the
// server was stopped by any of these, [ErrServerClosed] when it was
// already stopped, and the listener's error otherwise. Connection
// goroutines may outlive Serve by the time their request takes; Shutdown
// and Close wait for them.
//
// On Linux, when ln is a *net.TCPListener, connections are accepted and
// served by the server's event loops: accept4 on a duplicate of ln's
// descriptor, requests read, forwarded and answered on the loops, hooks
// (RewriteRequest, ModifyResponse, OnAttempt) called there, so they must
// not block. A request the loops do not serve — a chunked body or one
// larger than MaxHeaderBytes less its head, Expect: 100-continue, an
// upgrade (WebSocket), CONNECT, a wait in the backend queue — hands its
// connection, with the bytes read so far, to a goroutine that serves it
// from then on. A handler with TLS or H2C backends does not use the
// loops; its idle connections are parked on an epoll set with no
// goroutine and no buffer, and served by a new goroutine when bytes
// arrive (see internal/evloop). Other listeners, and other systems, keep
// one goroutine per connection. A listener closed by its owner rather
// than by the server is noticed within a fraction of a second.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cfg := &serve.Config[*clientConn]{
		Name:    "proxy",
		Closed:  ErrServerClosed,
		Logger:  s.cfg.Logger,
		Release: s.releaseConn,
	}
	engine, park := false, false
	if tl, tcp := ln.(*net.TCPListener); tcp && !s.g.Closing() {
		if el := s.engineListener(tl); el != nil {
			ln, engine = el, true
		} else {
			park = true
		}
	}
	poll := s.park.Enter(park, (*clientConn).ready, max(s.cfg.IdleTimeout/8, time.Millisecond), s.sweep)
	if engine {
		// The loops serve the connections; those handed over here get a
		// goroutine each.
		cfg.ServePark = s.serveConn
		cfg.Open = func(_ context.Context, c net.Conn) *clientConn { return s.newConn(c, nil, nil) }
	} else if poll != nil {
		cfg.ServePark = s.serveConn
		cfg.Open = func(_ context.Context, c net.Conn) *clientConn { return s.newConn(c, cfg, poll) }
	} else {
		cfg.Serve = func(pc *clientConn) { s.serveConn(pc) }
		cfg.Open = func(_ context.Context, c net.Conn) *clientConn { return s.newConn(c, nil, nil) }
	}
	err := s.g.Run(ctx, ln, cfg)
	if engine && errors.Is(err, ErrServerClosed) {
		// Shutdown came after the loops took ln, before the group did:
		// this Serve ran, and was stopped.
		err = nil
	}
	if engine && ctx.Err() != nil {
		// The end of ctx means Close.
		s.eng.Kill()
		s.eng.Stop()
	}
	s.park.Leave(s.g.Len)
	return err
}

// sweep closes parked connections idle for longer than IdleTimeout; the
// parking's sweeper calls it every eighth of that.
func (s *Server) sweep(now time.Time) {
	limit := now.Add(-s.cfg.IdleTimeout).UnixNano()
	s.g.Each(func(pc *clientConn) {
		if pc.state.Load() == pcParked && pc.since.Load() <= limit && pc.state.CompareAndSwap(pcParked, pcRunning) {
			pc.c.Close()
			go pc.resume() // to leave the group
		}
	})
}

// Shutdown stops the server gracefully: it closes the listeners, lets
// each connection finish the request it is serving (body and response
// included) and closes it instead of waiting for another, and waits for
// them until ctx ends, when it closes those left. It returns nil, or
// ctx.Err() if it had to force. It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	// Wake connections waiting for a request; one serving a request
	// finishes it first (it checks closing before reading on).
	forced := s.eng.Shutdown(ctx)
	err := s.g.Shutdown(ctx, func(pc *clientConn) {
		if pc.state.CompareAndSwap(pcParked, pcRunning) {
			go pc.resume() // it sees the server closing and closes
			return
		}
		if pc.idle.Load() {
			pc.c.SetReadDeadline(aLongTimeAgo)
		}
	})
	s.park.Stop()
	if !forced {
		// Connections the loops handed over while the group drained
		// may have come back: none can, the listeners are closed.
		forced = s.eng.Shutdown(ctx)
	}
	s.eng.Stop()
	if err == nil && forced {
		err = ctx.Err()
	}
	return err
}

// Close stops the server now: it closes the listeners and every client
// connection, and waits for their goroutines. It is idempotent and
// returns nil.
func (s *Server) Close() error {
	s.eng.Kill()
	s.g.Close()
	s.park.Stop()
	s.eng.Stop()
	return nil
}

// Parking states of a clientConn (see internal/evloop).
const (
	pcRunning = iota // a goroutine owns the connection
	pcParking        // its goroutine reads once more before parking
	pcPending        // bytes arrived while parking: read again
	pcParked         // no goroutine: the poller or Shutdown resumes it
)

// clientConn is what the server keeps per client connection: all an idle
// connection holds. The request state (srvConn) is taken from a pool
// while the connection is served.
type clientConn struct {
	s        *Server
	c        net.Conn
	rc       syscall.RawConn // nil: the connection never parks
	poll     *evloop.Poller[clientConn]
	fd       int
	added    bool // fd is in the poller's set
	busy     bool // requests come often: wait on the goroutine first
	answered bool // a request was answered
	remote   string
	dl       time.Time // the read deadline last set, kept while parked
	resume   func()    // serves the connection again after it parked
	sc       *srvConn  // nil while parked
	state    atomic.Int32
	since    atomic.Int64 // when it parked, Unix nanoseconds
	idle     atomic.Bool  // waiting for a request in a blocking read
	pre      []byte       // bytes read by the engine before it handed the connection over
}

// Close closes the client connection; the server's group calls it to
// force a connection shut. A parked connection is resumed to leave the
// group.
func (pc *clientConn) Close() error {
	err := pc.c.Close()
	pc.unpark()
	return err
}

// unpark resumes a parked connection on a new goroutine; it does nothing
// when the connection runs.
func (pc *clientConn) unpark() {
	if pc.state.CompareAndSwap(pcParked, pcRunning) {
		go pc.resume()
	}
}

// ready is the poller's news that bytes arrived: it resumes a parked
// connection and tells one that is parking to read again.
func (pc *clientConn) ready() {
	for {
		switch pc.state.Load() {
		case pcParked:
			if pc.state.CompareAndSwap(pcParked, pcRunning) {
				go pc.resume()
				return
			}
		case pcParking:
			if pc.state.CompareAndSwap(pcParking, pcPending) {
				return
			}
		default:
			return
		}
	}
}

// newConn wraps an accepted connection; with cfg (Serve's, parking) a
// TCP connection may park.
func (s *Server) newConn(c net.Conn, cfg *serve.Config[*clientConn], poll *evloop.Poller[clientConn]) *clientConn {
	var pre []byte
	if p, ok := c.(*evloop.PreConn); ok {
		c, pre = p.Conn, p.Pre
	}
	pc := &clientConn{s: s, c: c, fd: -1, remote: c.RemoteAddr().String(), pre: pre}
	if tc, ok := c.(*net.TCPConn); ok && poll != nil {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { pc.fd = int(fd) })
			pc.rc, pc.poll = rc, poll
			pc.resume = s.g.Resumer(cfg, pc)
		}
	}
	return pc
}

// takeConn binds request state from the pool to pc.
func (s *Server) takeConn(pc *clientConn) *srvConn {
	sc, _ := s.pool.Get().(*srvConn)
	if sc == nil {
		sc = newSrvConn()
	}
	sc.s, sc.c, sc.pc = s, pc.c, pc
	sc.src = prefixReader{c: pc.c}
	sc.dl = pc.dl
	sc.remote = pc.remote
	sc.hijacked = false
	pc.sc = sc
	return sc
}

// newSrvConn returns request state with its maps made.
func newSrvConn() *srvConn {
	sc := &srvConn{
		hdr:  make(http.Header, 16),
		rh:   make(http.Header, 4),
		trl:  make(http.Header),
		vals: make([]string, 0, 32),
	}
	sc.req.URL = &url.URL{}
	sc.readFn = sc.rawRead
	return sc
}

// logger returns the logger of accept errors.
func (s *Server) logger() *slog.Logger {
	if s.cfg.Logger != nil {
		return s.cfg.Logger
	}
	return slog.Default()
}

// putConn returns request state to the pool; nothing may be buffered.
func (s *Server) putConn(sc *srvConn) {
	sc.release()
	sc.c, sc.s, sc.pc, sc.src = nil, nil, nil, prefixReader{}
	s.pool.Put(sc)
}

// srvConn is the per-connection state of a Server. It is the
// http.ResponseWriter the handler's core writes to.
type srvConn struct {
	s      *Server
	pc     *clientConn
	c      net.Conn
	br     *bufio.Reader // nil while idle
	bw     *bufio.Writer // nil while idle
	src    prefixReader  // br's source: the first bytes, then c
	first  [2 << 10]byte // the first read of a request, made without br
	dl     time.Time     // the read deadline last set
	remote string
	key    h1.KeyRequest // the current request as a key source

	readFn func(fd uintptr) bool // rawRead, made once
	rn     int                   // rawRead's result
	rerr   error

	buf  []byte // the current request head, names canonicalised
	head h1.Head
	req  http.Request
	hdr  http.Header // request header, cleared per request
	trl  http.Header // request trailers, cleared per request
	vals []string    // backing store of hdr's values
	body bodyReader

	// Response state.
	rh        http.Header // response header (error answers) and trailers
	wrote     bool
	bodyless  bool // HEAD, 204, 304: the body is not sent
	chunked   bool // the response is chunked to the client
	closeConn bool // close after this response
	hijacked  bool
}

var (
	_ http.ResponseWriter = (*srvConn)(nil)
	_ http.Flusher        = (*srvConn)(nil)
	_ http.Hijacker       = (*srvConn)(nil)
)

// releaseConn frees pc's request state once it left the server's group.
func (s *Server) releaseConn(pc *clientConn) {
	if pc.sc != nil {
		s.putConn(pc.sc)
		pc.sc = nil
	}
	if pc.poll != nil {
		pc.poll.Forget(pc.fd, pc)
		s.park.Release(s.g.Len) // the last connection of a stopped Serve
	}
}

// serveConn serves pc until it closes (or is hijacked), or parks it: it
// reports whether it parked.
func (s *Server) serveConn(pc *clientConn) bool {
	sc := pc.sc
	if sc == nil {
		if pc.rc != nil {
			// Resumed: a request within parkAfter of the last makes the
			// connection busy, kept on a goroutine between requests.
			// The wait for a new connection's first request does not
			// count.
			pc.busy = pc.answered && time.Now().UnixNano()-pc.since.Load() < int64(parkAfter)
			if pc.busy && pc.added {
				// No events while it waits on its goroutine: it is
				// added again when it parks.
				pc.poll.Remove(pc.fd, pc)
				pc.added = false
			}
		}
		sc = s.takeConn(pc)
	}
	if sc.serve() {
		return true
	}
	if !sc.hijacked {
		pc.c.Close()
	}
	return false
}

// serve runs sc's connection's requests; it reports whether the
// connection parked, when sc went back to the pool.
func (sc *srvConn) serve() bool {
	s, pc := sc.s, sc.pc
	readTimeout, idleTimeout := s.cfg.ReadTimeout, s.cfg.IdleTimeout
	c := sc.c
	for {
		if s.g.Closing() {
			if sc.bw != nil {
				sc.bw.Flush()
			}
			return false
		}
		if sc.br == nil || sc.br.Buffered() == 0 {
			// Answers to pipelined requests are sent together, once no
			// request is waiting.
			if sc.bw != nil && sc.bw.Buffered() > 0 {
				if sc.bw.Flush() != nil {
					return false
				}
			}
			// An idle connection holds no buffer (as nginx's do not):
			// 1,000 idle clients cost 1,000 small arrays, not 24 MiB,
			// and busy connections share warm buffers.
			sc.release()
			// The idle deadline moves only when it drifted by an eighth
			// of its span: most requests then set no timer. A busy
			// connection waits on its goroutine for up to parkAfter, then
			// parks.
			now := time.Now()
			wait, tol, parkLater := idleTimeout, idleTimeout, false
			if pc.rc != nil && pc.busy && parkAfter < idleTimeout {
				// Parking a little early or late does not matter: move
				// the deadline only when it drifted by half of parkAfter.
				wait, tol, parkLater = parkAfter, 4*parkAfter, true
			}
			if want := now.Add(wait); sc.dl.IsZero() || drifted(want, sc.dl, tol) {
				c.SetReadDeadline(want)
				sc.dl = want
			}
			if s.g.Closing() {
				return false
			}
			n, err := 0, errWouldBlock
			if pc.pre != nil {
				// Handed over by the engine with these bytes.
				sc.src.pre, pc.pre = pc.pre, nil
				sc.acquire()
				if !sc.serveOne(readTimeout) {
					sc.bw.Flush()
					return false
				}
				pc.answered = true
				continue
			}
			if pc.rc != nil && !parkLater {
				// Read what is there; park when nothing is.
				n, err = sc.readOrPark(now)
				switch err {
				case errParked:
					return true
				case errClosing:
					return false
				}
			}
			if err == errWouldBlock {
				pc.idle.Store(true)
				if s.g.Closing() {
					pc.idle.Store(false)
					return false
				}
				n, err = c.Read(sc.first[:])
				pc.idle.Store(false)
				if parkLater && err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !s.g.Closing() {
					// Idle for parkAfter: park, with the sweeper
					// bounding the rest of IdleTimeout.
					pc.busy = false
					sc.dl = time.Time{}
					c.SetReadDeadline(sc.dl)
					switch n, err = sc.readOrPark(time.Now().Add(-parkAfter)); err {
					case errParked:
						return true
					case errClosing:
						return false
					}
				}
			}
			if err != nil {
				return false
			}
			sc.src.pre = sc.first[:n]
			sc.acquire()
		}
		if !sc.serveOne(readTimeout) {
			sc.bw.Flush()
			return false
		}
		pc.answered = true
	}
}

// parkAfter is how long a busy connection waits for its next request on
// its goroutine before it parks. A connection is busy when a request came
// within parkAfter of its parking: resuming a connection costs more than
// a goroutine waiting in the runtime's poller, but an idle one should
// not hold a goroutine for long.
var parkAfter = 10 * time.Second // a variable for tests

var (
	errWouldBlock = errors.New("proxy: would block")
	errParked     = errors.New("proxy: parked")
	errClosing    = errors.New("proxy: closing")
)

// rawRead reads once from fd without waiting; it is sc.readFn.
func (sc *srvConn) rawRead(fd uintptr) bool {
	sc.rn, sc.rerr = unix.Read(int(fd), sc.first[:])
	return true
}

// tryRead reads what the client sent into sc.first without waiting:
// errWouldBlock when nothing is there, io.EOF when the client closed.
func (sc *srvConn) tryRead() (int, error) {
	if err := sc.pc.rc.Read(sc.readFn); err != nil {
		return 0, err
	}
	switch {
	case sc.rerr == unix.EAGAIN || sc.rerr == unix.EINTR:
		return 0, errWouldBlock
	case sc.rerr != nil:
		return 0, sc.rerr
	case sc.rn == 0:
		return 0, io.EOF
	}
	return sc.rn, nil
}

// readOrPark reads what the client sent into sc.first or, when nothing
// is there, parks the connection: errParked then, when sc went back to
// the pool and the caller must return at once. errWouldBlock means the
// connection cannot park (read it on this goroutine); errClosing that
// the server is closing and the connection is still this goroutine's.
func (sc *srvConn) readOrPark(now time.Time) (int, error) {
	s, pc := sc.s, sc.pc
	for {
		pc.state.Store(pcParking)
		if !pc.added {
			if err := pc.poll.Add(pc.fd, pc); err != nil {
				pc.state.Store(pcRunning)
				pc.rc = nil // never again
				return 0, errWouldBlock
			}
			pc.added = true
		}
		n, err := sc.tryRead()
		if err != errWouldBlock {
			pc.state.Store(pcRunning)
			return n, err
		}
		pc.dl, pc.sc = sc.dl, nil
		pc.since.Store(now.UnixNano())
		if pc.state.CompareAndSwap(pcParking, pcParked) {
			// Another goroutine may own the connection from here.
			if s.g.Closing() && pc.state.CompareAndSwap(pcParked, pcRunning) {
				pc.sc = sc
				return 0, errClosing
			}
			s.putConn(sc)
			return 0, errParked
		}
		// Bytes arrived meanwhile.
		pc.sc = sc
	}
}

// serveOne reads, forwards and answers one request. It reports whether
// the connection stays open.
func (sc *srvConn) serveOne(readTimeout time.Duration) bool {
	code := sc.readRequest(readTimeout)
	if code < 0 {
		return false // the client went away or timed out
	}
	if code > 0 {
		sc.writeRefusal(code)
		return false
	}
	if !sc.prepare() {
		sc.writeRefusal(http.StatusBadRequest)
		return false
	}
	abort := sc.s.cfg.Handler.serve(sc, &sc.req)
	if sc.hijacked {
		return false
	}
	if abort {
		sc.c.Close() // the client sees the response cut short
		return false
	}
	if !sc.wrote {
		writeError(sc, http.StatusBadGateway, "proxy: bad gateway\n")
	}
	if sc.chunked {
		sc.writeLastChunk()
	}
	if sc.closeConn || !sc.body.done() {
		if sc.bw.Flush() == nil && !sc.body.done() {
			h1.LingerClose(sc.c, sc.br)
		}
		return false
	}
	return true
}

// writeLastChunk ends a chunked response: the last chunk and the
// trailers the backend sent (kept in sc.rh under http.TrailerPrefix).
func (sc *srvConn) writeLastChunk() {
	bw := sc.bw
	bw.WriteString("0\r\n")
	for k, vv := range sc.rh {
		name, ok := cutTrailerPrefix(k)
		if !ok || !h1.IsToken(name) {
			continue
		}
		for _, v := range vv {
			if h1.ValidValue(v) {
				bw.WriteString(name)
				bw.WriteString(": ")
				bw.WriteString(v)
				bw.WriteString("\r\n")
			}
		}
	}
	bw.WriteString("\r\n")
}

func cutTrailerPrefix(k string) (string, bool) {
	if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
		return k[len(http.TrailerPrefix):], true
	}
	return "", false
}

// readRequest reads one request head into sc.buf and parses it. It
// returns 0, a status to refuse the request with, or -1 when the
// connection failed.
func (sc *srvConn) readRequest(readTimeout time.Duration) int {
	head, code, err := h1.ReadHead(sc.br, func() {
		// Most heads arrive whole: only a partial one costs a deadline
		// update.
		sc.dl = time.Now().Add(readTimeout)
		sc.c.SetReadDeadline(sc.dl)
	})
	if err != nil {
		return -1
	}
	if code != 0 {
		return code
	}
	sc.buf = append(sc.buf[:0], head...)
	sc.br.Discard(len(head))
	if code := sc.head.Parse(sc.buf); code != 0 {
		return code
	}
	if sc.head.HasBody() {
		// Bodies may take long to upload; the idle deadline must not
		// cut them. The body's reads set their own (bodyReader.Read).
		sc.dl = time.Time{}
		sc.c.SetReadDeadline(sc.dl)
	}
	return 0
}

// drifted reports whether deadline want is more than an eighth of d away
// from the deadline set: only then is it worth a timer update.
func drifted(want, set time.Time, d time.Duration) bool {
	diff := want.Sub(set)
	return diff > d/8 || diff < -d/8
}

// prepare fills sc.req from sc.head, reusing every part of it. It
// reports false for a target net/url cannot take, which the parser
// should have refused already: such a request is never forwarded.
func (sc *srvConn) prepare() bool {
	rh := &sc.head
	clear(sc.hdr)
	vals := sc.vals[:0]
	for _, f := range rh.Fields {
		if old, ok := sc.hdr[f.Name]; ok {
			sc.hdr[f.Name] = append(old, f.Value)
			continue
		}
		i := len(vals)
		vals = append(vals, f.Value)
		sc.hdr[f.Name] = vals[i : i+1 : i+1]
	}
	sc.vals = vals
	u := sc.req.URL
	*u = url.URL{}
	r := &sc.req
	*r = http.Request{
		Method:     rh.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: rh.Minor,
		Header:     sc.hdr,
		Host:       rh.Host,
		RemoteAddr: sc.remote,
		RequestURI: rh.Target,
	}
	if rh.Minor == 0 {
		r.Proto = "HTTP/1.0"
	}
	switch {
	case rh.Target[0] == '/' || rh.Target == "*":
	case rh.Method == http.MethodConnect:
		// Authority form, as net/http gives it.
		u.Host, r.Host = rh.Target, rh.Target
	default:
		// Absolute form: its authority replaces Host (RFC 9112 3.2.2).
		pu, err := url.ParseRequestURI(rh.Target)
		if err != nil || pu.Host == "" {
			return false
		}
		r.URL = pu
		r.Host = pu.Host
	}
	sc.body.reset(sc, rh)
	if rh.Chunked {
		if len(sc.trl) > 0 {
			clear(sc.trl)
		}
		r.Trailer = sc.trl
		sc.body.cr.trailer = sc.trl
	}
	if sc.body.left != 0 {
		r.Body = &sc.body
		r.ContentLength = rh.ContentLength
	} else {
		r.Body = http.NoBody
	}
	if len(sc.rh) > 0 {
		clear(sc.rh)
	}
	sc.wrote, sc.bodyless, sc.chunked = false, false, false
	sc.closeConn = !rh.KeepAlive() || sc.s.g.Closing()
	return true
}

// Header returns the response header map; the proxy's core fills it for
// its own error answers and with trailers.
func (sc *srvConn) Header() http.Header { return sc.rh }

// WriteHeader writes a response head from the header map.
func (sc *srvConn) WriteHeader(code int) {
	if sc.wrote {
		return
	}
	sc.wrote = true
	sc.bodyless = sc.req.Method == http.MethodHead || code == 204 || code == 304 || code < 200
	bw := sc.bw
	h1.WriteStatusLine(bw, code, nil)
	hasCL := false
	for k, vv := range sc.rh {
		if _, ok := cutTrailerPrefix(k); ok || isHopByHop([]byte(k)) || !h1.IsToken(k) {
			continue
		}
		if k == "Content-Length" {
			hasCL = true
		}
		for _, v := range vv {
			if !h1.ValidValue(v) {
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	sc.endHead(hasCL)
}

// writeUpstreamHead writes a backend's response head straight from its
// bytes: its end-to-end fields, a normalised Content-Length, Via, the
// sticky cookie, and the framing and Connection fields for this client.
func (sc *srvConn) writeUpstreamHead(h *HTTP, head *respHead, u *upstream, rq *request, bodyless bool) {
	sc.wrote = true
	sc.bodyless = bodyless
	bw := sc.bw
	h1.WriteStatusLine(bw, head.status, head.reason)
	for _, f := range head.fields {
		if f.skip {
			continue
		}
		bw.Write(head.name(f))
		bw.WriteString(": ")
		bw.Write(head.value(f))
		bw.WriteString("\r\n")
	}
	hasCL := head.contentLength >= 0
	if head.normalizedCL() {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), head.contentLength, 10))
		bw.WriteString("\r\n")
	}
	if h.via != "" {
		bw.WriteString("Via: 1.1 ")
		bw.WriteString(h.via)
		bw.WriteString("\r\n")
	}
	if h.cookieName != "" && rq.sticky != u {
		bw.WriteString("Set-Cookie: ")
		bw.WriteString(h.cookieName)
		bw.WriteByte('=')
		bw.WriteString(u.token)
		bw.WriteString(h.cookies.Attrs)
		bw.WriteString("\r\n")
	}
	sc.endHead(hasCL)
}

// endHead chooses the framing towards the client, writes it with the
// Connection field and ends the head.
func (sc *srvConn) endHead(hasCL bool) {
	bw := sc.bw
	if !sc.bodyless && !hasCL {
		if sc.head.Minor == 1 {
			sc.chunked = true
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		} else {
			sc.closeConn = true // delimited by close
		}
	}
	if !sc.body.done() {
		// An unread body (or one never asked for with 100 Continue): the
		// connection cannot be reused.
		sc.closeConn = true
	}
	switch {
	case sc.closeConn:
		bw.WriteString("Connection: close\r\n\r\n")
	case sc.head.Minor == 0:
		bw.WriteString("Connection: keep-alive\r\n\r\n")
	default:
		bw.WriteString("\r\n")
	}
}

// Write writes body bytes, chunked when the response is.
func (sc *srvConn) Write(p []byte) (int, error) {
	if !sc.wrote {
		sc.WriteHeader(http.StatusOK)
	}
	if sc.bodyless || len(p) == 0 {
		return len(p), nil
	}
	if sc.chunked {
		bw := sc.bw
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		if _, err := bw.WriteString("\r\n"); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return sc.bw.Write(p)
}

// Flush sends what is buffered to the client.
func (sc *srvConn) Flush() { sc.bw.Flush() }

// Hijack hands the connection over (for upgrades). What the server has
// buffered for the client is sent first.
func (sc *srvConn) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if sc.wrote {
		return nil, nil, errors.New("proxy: hijack after the response head")
	}
	if err := sc.bw.Flush(); err != nil {
		return nil, nil, err
	}
	sc.hijacked = true
	if pc := sc.pc; pc != nil && pc.added {
		// The handler owns the connection now: no more events.
		pc.poll.Remove(pc.fd, pc)
		pc.added = false
	}
	sc.c.SetReadDeadline(time.Time{})
	return sc.c, bufio.NewReadWriter(sc.br, bufio.NewWriter(sc.c)), nil
}

// acquire takes a reader and a writer from the server's pools.
func (sc *srvConn) acquire() {
	s := sc.s
	sc.br, _ = s.brPool.Get().(*bufio.Reader)
	if sc.br == nil {
		sc.br = bufio.NewReaderSize(nil, s.cfg.MaxHeaderBytes)
	}
	sc.br.Reset(&sc.src)
	sc.bw, _ = s.bwPool.Get().(*bufio.Writer)
	if sc.bw == nil {
		sc.bw = bufio.NewWriterSize(nil, 8<<10)
	}
	sc.bw.Reset(sc.c)
}

// release gives the reader and writer back; nothing may be buffered.
func (sc *srvConn) release() {
	if sc.br != nil {
		sc.br.Reset(nil)
		sc.s.brPool.Put(sc.br)
		sc.br = nil
	}
	if sc.bw != nil {
		sc.bw.Reset(nil)
		sc.s.bwPool.Put(sc.bw)
		sc.bw = nil
	}
}

// prefixReader returns pre, then reads from c.
type prefixReader struct {
	pre []byte
	c   net.Conn
}

func (r *prefixReader) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		return n, nil
	}
	return r.c.Read(p)
}

// writeRefusal answers a request the server will not forward and marks
// the connection for closing.
func (sc *srvConn) writeRefusal(code int) {
	msg := "proxy: " + http.StatusText(code) + "\n"
	bw := sc.bw
	h1.WriteStatusLine(bw, code, nil)
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(msg)), 10))
	bw.WriteString("\r\nConnection: close\r\n\r\n")
	bw.WriteString(msg)
	sc.bw.Flush()
}

// bodyReader reads a request body from the client connection: a known
// length or chunked. It sends 100 Continue before the first read when
// the client expects it.
type bodyReader struct {
	sc      *srvConn
	left    int64 // -1: chunked
	expect  bool
	cr      chunkedReader
	scratch []byte
}

func (b *bodyReader) reset(sc *srvConn, rh *h1.Head) {
	b.sc = sc
	b.expect = rh.ExpectContinue
	switch {
	case rh.Chunked:
		b.left = -1
		b.cr = chunkedReader{br: sc.br, scratch: &b.scratch, limit: sc.br.Size()}
	case rh.ContentLength > 0:
		b.left = rh.ContentLength
	default:
		b.left = 0
	}
}

// done reports whether the body was read to its end.
func (b *bodyReader) done() bool {
	return b.left == 0 || b.left < 0 && b.cr.done
}

// Read reads body bytes, each read bounded by the server's
// BodyIdleTimeout.
func (b *bodyReader) Read(p []byte) (int, error) {
	sc := b.sc
	if idle := sc.s.cfg.BodyIdleTimeout; idle > 0 && !b.done() {
		if want := time.Now().Add(idle); sc.dl.IsZero() || drifted(want, sc.dl, idle) {
			sc.dl = want
			sc.c.SetReadDeadline(want)
		}
	}
	if b.expect {
		b.expect = false
		bw := b.sc.bw
		bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := bw.Flush(); err != nil {
			return 0, err
		}
	}
	if b.left < 0 {
		return b.cr.Read(p)
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.sc.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Close does nothing: the server decides about the connection.
func (b *bodyReader) Close() error { return nil }
