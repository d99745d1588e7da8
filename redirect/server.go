package redirect

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/evloop"
	"github.com/lbkit/lbkit/internal/h1"
	"github.com/lbkit/lbkit/internal/serve"
)

// Defaults for [ServerConfig] fields left zero.
const (
	DefaultReadTimeout    = 10 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
	DefaultMaxHeaderBytes = 16 << 10
	// DefaultBodyIdleTimeout is nginx's client_body_timeout.
	DefaultBodyIdleTimeout = 30 * time.Second
)

// ErrServerClosed is returned by [Server.Serve] called after the server
// was stopped (Shutdown, Close or the end of an earlier Serve's context).
var ErrServerClosed = errors.New("redirect: server closed")

// Server answers HTTP/1.1 requests with a [Handler]'s redirects without
// net/http: a purpose-built responder that reads only the request line and
// the headers the handler uses, writes the response straight into a
// per-connection buffer and does not allocate per request. It answers
// what [Handler.ServeHTTP] answers under net/http for the same request,
// with two exceptions: "OPTIONS *" is redirected to a backend's root
// (net/http's server answers it itself with 200 and never calls the
// handler), and CONNECT gets 400 (net/http hands it to the handler, which
// redirects it to "/"). It is stricter than net/http about what it
// accepts:
//
//   - request heads are parsed by the HTTP/1.1 codec it shares with
//     proxy.Server, with the same smuggling rules: a line not ending in
//     CRLF, obsolete line folding, white space before a header's colon,
//     control characters, a missing (HTTP/1.1) or repeated Host,
//     differing Content-Length values or Content-Length with
//     Transfer-Encoding get 400, a transfer coding other than chunked
//     501, an expectation other than 100-continue 417, versions other
//     than HTTP/1.0 and 1.1 505, and the connection is closed;
//   - request bodies are never interpreted: a body of known length up to
//     64 KiB is skipped so the connection can be reused, anything else
//     (chunked, larger, or one the client waits to send after 100
//     Continue) is answered with "Connection: close", after which the
//     server stops reading the request, so no body byte is ever taken
//     for a request;
//   - a request head (request line and headers) longer than
//     MaxHeaderBytes gets 414 if the request line alone does not fit, 431
//     otherwise.
//
// Use [Handler] with net/http when you need TLS, HTTP/2 or middleware;
// use Server for the highest request rate on plain HTTP/1.1.
//
// Make one with [NewServer]. Serve, ListenAndServe, Shutdown and Close
// are safe for concurrent use. The server never closes the handler's
// pool.
type Server struct {
	cfg  ServerConfig // defaults filled in
	g    serve.Group[*clientConn]
	pool sync.Pool // *srvConn

	park evloop.Parking[clientConn] // idle connections of the goroutine path

	eng      engine // the event loops of TCP listeners (Linux)
	noEngine bool   // tests: the goroutine paths only
}

// ServerConfig configures a [Server]. Only Handler is required; every
// other field has a useful zero value, documented on the field.
type ServerConfig struct {
	// Handler makes the decisions. Required.
	Handler *Handler
	// ReadTimeout bounds the time to receive one request's line and
	// headers (and a body it skips) once its first byte arrived. Zero
	// means DefaultReadTimeout.
	ReadTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// BodyIdleTimeout bounds the wait for each read of a request body the
	// server skips (the time between body bytes); ReadTimeout still
	// bounds the request as a whole. Zero means DefaultBodyIdleTimeout;
	// negative means only ReadTimeout applies.
	BodyIdleTimeout time.Duration
	// MaxHeaderBytes caps the request line and headers together; it is
	// the size of each connection's read buffer, which holds a whole
	// request head while it is answered. Zero means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Logger receives accept errors. Nil means slog.Default().
	Logger *slog.Logger
}

// NewServer validates cfg and returns a server; nothing runs until
// [Server.Serve].
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("redirect: ServerConfig.Handler is required")
	}
	if cfg.ReadTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 {
		return nil, errors.New("redirect: ServerConfig timeouts and sizes must not be negative")
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.BodyIdleTimeout == 0 {
		cfg.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return &Server{cfg: cfg}, nil
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
// ends, [Server.Shutdown] or [Server.Close] is called, or ln fails. It
// closes ln before returning. The end of ctx means Close: ln and every
// open connection are closed at once. Serve returns nil when the server
// was stopped by any of these, [ErrServerClosed] when it was already
// stopped, and the listener's error otherwise. Connection goroutines may
// outlive Serve by the time they take to notice; Shutdown and Close wait
// for them.
//
// On Linux, when ln is a *net.TCPListener, the connections are served
// by a few event loops, one per CPU, rather than a goroutine each, and a
// connection waiting for its next request holds no goroutine and no
// buffer (see internal/evloop). Other listeners, and other systems, keep
// one goroutine per connection.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cfg := &serve.Config[*clientConn]{
		Name:    "redirect",
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
	if poll != nil {
		cfg.ServePark = s.serveClient
		cfg.Open = func(_ context.Context, c net.Conn) *clientConn { return s.newConn(c, cfg, poll) }
	} else {
		// The loops hand no connection over; others get a goroutine
		// each.
		cfg.Serve = func(pc *clientConn) { s.serveClient(pc) }
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

// Close stops the server now: it closes the listeners and every
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

// clientConn is what the server keeps per connection: all an idle
// connection holds. The request state (srvConn, with its buffers) is
// taken from a pool while the connection is served.
type clientConn struct {
	s        *Server
	c        net.Conn
	rc       syscall.RawConn // nil: the connection never parks
	poll     *evloop.Poller[clientConn]
	fd       int
	added    bool // fd is in the poller's set
	busy     bool // requests come often: wait on the goroutine first
	answered bool // a request was answered
	peer     netip.Addr
	resume   func() // serves the connection again after it parked
	sc       *srvConn
	state    atomic.Int32
	since    atomic.Int64 // when it parked, Unix nanoseconds
}

// Close closes the connection; the server's group calls it to force a
// connection shut. A parked connection is resumed to leave the group.
func (pc *clientConn) Close() error {
	err := pc.c.Close()
	if pc.state.CompareAndSwap(pcParked, pcRunning) {
		go pc.resume()
	}
	return err
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
	pc := &clientConn{s: s, c: c, fd: -1}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		pc.peer = ta.AddrPort().Addr().Unmap()
	} else if c.RemoteAddr() != nil {
		pc.peer = h1.ParseHostAddr(c.RemoteAddr().String())
	}
	if tc, ok := c.(*net.TCPConn); ok && poll != nil {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { pc.fd = int(fd) })
			pc.rc, pc.poll = rc, poll
			pc.resume = s.g.Resumer(cfg, pc)
		}
	}
	return pc
}

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

// takeConn binds request state from the pool to pc.
func (s *Server) takeConn(pc *clientConn) *srvConn {
	sc, _ := s.pool.Get().(*srvConn)
	if sc == nil {
		sc = &srvConn{s: s, out: make([]byte, 0, 1024)}
		sc.br = bufio.NewReaderSize(&sc.src, s.cfg.MaxHeaderBytes)
		sc.readFn = sc.rawRead
	}
	sc.c, sc.pc, sc.peer = pc.c, pc, pc.peer
	sc.src = connReader{sc: sc}
	sc.br.Reset(&sc.src)
	pc.sc = sc
	return sc
}

// putConn returns request state to the pool; nothing may be buffered.
func (s *Server) putConn(sc *srvConn) {
	sc.c, sc.pc = nil, nil
	sc.out = sc.out[:0]
	sc.linger = false
	s.pool.Put(sc)
}

// Shutdown stops the server gracefully: it closes the listeners, lets
// each connection finish the request it is answering and closes it
// instead of waiting for another, and waits for them until ctx ends, when
// it closes those left. It returns nil, or ctx.Err() if it had to force.
func (s *Server) Shutdown(ctx context.Context) error {
	// Wake connections waiting for a request; one in the middle of a
	// request finishes it first (it checks closing before reading on).
	forced := s.eng.Shutdown(ctx)
	err := s.g.Shutdown(ctx, func(pc *clientConn) {
		if pc.state.CompareAndSwap(pcParked, pcRunning) {
			go pc.resume() // it sees the server closing and closes
			return
		}
		pc.c.SetReadDeadline(time.Now())
	})
	s.park.Stop()
	s.eng.Stop()
	if err == nil && forced {
		err = ctx.Err()
	}
	return err
}

// srvConn is the per-connection state of a Server.
type srvConn struct {
	s       *Server
	pc      *clientConn
	c       net.Conn
	br      *bufio.Reader
	src     connReader            // br's source
	readFn  func(fd uintptr) bool // rawRead, made once
	rbuf    []byte                // rawRead's buffer
	rn      int                   // rawRead's result
	rerr    error
	out     []byte
	peer    netip.Addr
	head    h1.Head       // the current request, parsed in br's buffer
	key     h1.KeyRequest // the current request as a key source
	xff     [4]string     // the last X-Forwarded-For lines of a request
	nxff    int
	cookies [8]string // the first Cookie lines of a request
	ncookie int
	linger  bool      // unread request body may follow the last response
	now     time.Time // when the current batch of requests arrived
	readDL  time.Time // now + ReadTimeout: the whole request's deadline
}

// request is what the server keeps of one request beside sc.head.
type request struct {
	keepAlive bool
	bodyLen   int64 // -1: chunked, or the client waits for 100 Continue: close after answering
	headLen   int   // bytes of the request head in the read buffer
}

// errClose marks a request the server answers and then closes the
// connection on, with the status to send.
type errClose int

func (e errClose) Error() string { return strconv.Itoa(int(e)) }

const (
	maxSkipBody   = 64 << 10 // request bodies skipped to keep a connection
	maxPendingOut = 16 << 10 // answers buffered before a forced write
)

// serveConn serves c on this goroutine until it closes.
func (s *Server) serveConn(c net.Conn) {
	pc := s.newConn(c, nil, nil)
	s.serveClient(pc)
	s.releaseConn(pc)
}

// serveClient serves pc until it closes, or parks it: it reports whether
// it parked.
func (s *Server) serveClient(pc *clientConn) bool {
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
	pc.c.Close()
	return false
}

// connReader is a srvConn's bufio.Reader's source: the connection, read
// without waiting while the srvConn is about to park.
type connReader struct {
	sc       *srvConn
	nonblock bool
}

func (r *connReader) Read(p []byte) (int, error) {
	sc := r.sc
	if !r.nonblock {
		return sc.c.Read(p)
	}
	sc.rbuf = p
	err := sc.pc.rc.Read(sc.readFn)
	sc.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case sc.rerr == unix.EAGAIN || sc.rerr == unix.EINTR:
		return 0, errWouldBlock
	case sc.rerr != nil:
		return 0, sc.rerr
	case sc.rn == 0:
		return 0, io.EOF
	}
	return sc.rn, nil
}

// rawRead reads once from fd into sc.rbuf without waiting; it is
// sc.readFn.
func (sc *srvConn) rawRead(fd uintptr) bool {
	sc.rn, sc.rerr = unix.Read(int(fd), sc.rbuf)
	return true
}

// parkAfter is how long a busy connection waits for its next request on
// its goroutine before it parks. A connection is busy when a request came
// within parkAfter of its parking: resuming a connection costs more than
// a goroutine waiting in the runtime's poller, but an idle one should
// not hold a goroutine for long.
var parkAfter = 10 * time.Second // a variable for tests

var (
	errWouldBlock = errors.New("redirect: would block")
	errParked     = errors.New("redirect: parked")
	errClosing    = errors.New("redirect: closing")
)

// readOrPark fills sc.br with what the client sent or, when nothing is
// there, parks the connection: errParked then, when sc went back to the
// pool and the caller must return at once. errWouldBlock means the
// connection cannot park (read it on this goroutine); errClosing that the
// server is closing and the connection is still this goroutine's.
func (sc *srvConn) readOrPark(now time.Time) error {
	s, pc := sc.s, sc.pc
	for {
		pc.state.Store(pcParking)
		if !pc.added {
			if err := pc.poll.Add(pc.fd, pc); err != nil {
				pc.state.Store(pcRunning)
				pc.rc = nil // never again
				return errWouldBlock
			}
			pc.added = true
		}
		sc.src.nonblock = true
		_, err := sc.br.Peek(1)
		sc.src.nonblock = false
		if err != errWouldBlock {
			pc.state.Store(pcRunning)
			return err
		}
		pc.sc = nil
		pc.since.Store(now.UnixNano())
		if pc.state.CompareAndSwap(pcParking, pcParked) {
			// Another goroutine may own the connection from here.
			if s.g.Closing() && pc.state.CompareAndSwap(pcParked, pcRunning) {
				pc.sc = sc
				return errClosing
			}
			s.putConn(sc)
			return errParked
		}
		// Bytes arrived meanwhile.
		pc.sc = sc
	}
}

// serve answers sc's connection's requests; it reports whether the
// connection parked, when sc went back to the pool.
func (sc *srvConn) serve() bool {
	s, c := sc.s, sc.c
	readTimeout, idleTimeout := s.cfg.ReadTimeout, s.cfg.IdleTimeout
	for {
		if s.g.Closing() {
			return false
		}
		if sc.br.Buffered() == 0 {
			// Bound the flush and the wait for the next request, then
			// look at closing again: Shutdown may have set its own
			// deadline just before ours replaced it.
			// A busy connection waits on its goroutine for up to
			// parkAfter (which bounds its writes too), then parks.
			now := time.Now()
			parkLater := sc.pc.rc != nil && sc.pc.busy && parkAfter < idleTimeout
			if parkLater {
				c.SetDeadline(now.Add(parkAfter))
			} else {
				c.SetDeadline(now.Add(idleTimeout))
			}
			if s.g.Closing() {
				return false
			}
			if len(sc.out) > 0 {
				if _, err := c.Write(sc.out); err != nil {
					return false
				}
				sc.out = sc.out[:0]
			}
			err := errWouldBlock
			if sc.pc.rc != nil && !parkLater {
				// Read what is there; park when nothing is.
				switch err = sc.readOrPark(now); err {
				case errParked:
					return true
				case errClosing:
					return false
				}
			}
			if err == errWouldBlock {
				_, err = sc.br.Peek(1)
				if parkLater && err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !s.g.Closing() {
					// Idle for parkAfter: park, with the sweeper
					// bounding the rest of IdleTimeout.
					sc.pc.busy = false
					c.SetReadDeadline(time.Time{})
					switch err = sc.readOrPark(time.Now().Add(-parkAfter)); err {
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
			sc.now = time.Now() // the request's arrival: Date and the read deadline
			sc.readDL = sc.now.Add(readTimeout)
			c.SetReadDeadline(sc.readDL)
		}
		if len(sc.out) >= maxPendingOut {
			// A client pipelining without reading: push answers out
			// rather than buffer them without bound.
			if _, err := c.Write(sc.out); err != nil {
				return false
			}
			sc.out = sc.out[:0]
		}
		keep, err := sc.step(s.g.Closing())
		sc.pc.answered = true
		if !keep {
			if len(sc.out) > 0 {
				c.Write(sc.out)
			}
			if err == nil && sc.linger {
				h1.LingerClose(c, sc.br)
			}
			return false
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
		if err := sc.skipBody(req.bodyLen); err != nil {
			return false, err
		}
	}
	return true, nil
}

// skipBody discards n body bytes. Each wait for more is bounded by
// BodyIdleTimeout as well as by the request's ReadTimeout.
func (sc *srvConn) skipBody(n int64) error {
	idle := sc.s.cfg.BodyIdleTimeout
	for n > 0 {
		if sc.br.Buffered() == 0 {
			// Tests drive step without a connection.
			if sc.c != nil && idle > 0 {
				dl := time.Now().Add(idle)
				if !sc.readDL.IsZero() && sc.readDL.Before(dl) {
					dl = sc.readDL
				}
				sc.c.SetReadDeadline(dl)
			}
			if _, err := sc.br.Peek(1); err != nil {
				return err
			}
		}
		k, _ := sc.br.Discard(int(min(n, int64(sc.br.Buffered()))))
		n -= int64(k)
	}
	return nil
}

// readRequest reads and parses one request head. sc.head's strings
// point into the read buffer: use them before calling sc.br again, and
// consume the head with Discard(req.headLen). Parsing only a fully
// buffered head matters: a later read could slide the buffer.
func (sc *srvConn) readRequest() (request, error) {
	head, code, err := h1.ReadHead(sc.br, nil)
	if err != nil {
		return request{}, err
	}
	if code == 0 {
		code = sc.head.Parse(head)
	}
	if code != 0 {
		return request{}, errClose(code)
	}
	return sc.request(len(head)), nil
}

// request is what sc keeps of the request whose head, headLen bytes
// long, sc.head parsed.
func (sc *srvConn) request(headLen int) request {
	h := &sc.head
	req := request{headLen: headLen, keepAlive: h.KeepAlive()}
	switch {
	case h.Chunked, h.ExpectContinue:
		// A chunked body is not skipped; a client expecting 100 Continue
		// waits for it, which never comes: answer and close rather than
		// wait for a body it may never send.
		req.bodyLen = -1
	case h.ContentLength > 0:
		req.bodyLen = h.ContentLength
	}
	sc.nxff, sc.ncookie = 0, 0
	for _, f := range h.Fields {
		switch f.Name {
		case "Cookie":
			if sc.ncookie < len(sc.cookies) {
				sc.cookies[sc.ncookie] = f.Value
				sc.ncookie++
			}
		case "X-Forwarded-For":
			if sc.nxff == len(sc.xff) { // keep the last lines: the nearest hops
				copy(sc.xff[:], sc.xff[1:])
				sc.nxff--
			}
			sc.xff[sc.nxff] = f.Value
			sc.nxff++
		}
	}
	return req
}

// target returns the path and query of the request's target in origin,
// absolute or asterisk form ("*" stands for "/"). ok is false for the
// authority form (CONNECT).
func (sc *srvConn) target() (path, query string, hasQuery, ok bool) {
	h := &sc.head
	if h.Target == "*" {
		return "/", "", false, true
	}
	path = h.Path()
	if path == "" {
		return "", "", false, false
	}
	query, hasQuery = h.RawQuery()
	return path, query, hasQuery, true
}

// answer renders the handler's decision for req into sc.out and reports
// whether the connection stays open.
func (sc *srvConn) answer(req request, keep bool) bool {
	h := sc.s.cfg.Handler
	path, query, hasQuery, ok := sc.target()
	if !ok {
		sc.writeError(http.StatusBadRequest)
		return false
	}
	var client netip.Addr
	if h.needClient() {
		client = h.trusted.Client(sc.peer, sc.xff[:sc.nxff])
	}
	var kr balancer.KeyRequest
	if !h.key.IsZero() {
		sc.key = h1.KeyRequest{Head: &sc.head, Client: client}
		kr = &sc.key
	}
	d := h.decide(sc.head.Method, path, query, hasQuery, client, sc.cookies[:sc.ncookie], kr)
	b := sc.out
	switch {
	case d.fallback:
		b = append(b, h1.StatusLine(d.code)...)
		b = append(b, "Location: "...)
		b = append(b, h.fallback[0]...)
		b = append(b, "\r\n"...)
	case d.t == nil:
		sc.out = b
		sc.writeErrorKeep(d.code, errorBody(d.code), keep)
		return keep
	default:
		b = append(b, h1.StatusLine(d.code)...)
		b = append(b, "Location: "...)
		b = h1.AppendLocation(b, d.t.base, path, query, hasQuery)
		b = append(b, "\r\n"...)
		if d.setCookie {
			b = append(b, "Set-Cookie: "...)
			b = append(b, d.t.setCookie[0]...)
			b = append(b, "\r\n"...)
		}
		if h.links > 0 {
			if l := h.duplicateLinks(d.snap, d.v, d.t, path, query, hasQuery); l != "" {
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
	b = h1.AppendDate(b, sc.now)
	b = append(b, "Content-Length: 0\r\n"...)
	b = sc.appendConnection(b, keep)
	sc.out = append(b, "\r\n"...)
	return keep
}

func (sc *srvConn) appendConnection(b []byte, keep bool) []byte {
	switch {
	case !keep:
		return append(b, "Connection: close\r\n"...)
	case sc.head.Minor == 0:
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
	b := append(sc.out, h1.StatusLine(code)...)
	b = append(b, "Cache-Control: "...)
	if code == http.StatusServiceUnavailable {
		b = append(b, "no-store\r\nRetry-After: "...)
		b = append(b, sc.s.cfg.Handler.retryAfter[0]...)
	} else {
		b = append(b, sc.s.cfg.Handler.cacheControl[0]...)
	}
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"...)
	b = h1.AppendDate(b, sc.now)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	sc.out = append(b, body...)
}
