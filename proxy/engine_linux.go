//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/h1"
	"github.com/lbkit/lbkit/internal/rawsys"
)

// The event engine serves a [Server]'s plain HTTP/1.1 connections on a
// few event loops, one per CPU, instead of a goroutine per connection:
// each loop waits in epoll for its client and backend sockets (raw
// descriptors: accept4 on the loops, non-blocking connect, no net.Conn),
// reads a request head when it is readable, picks a backend, writes the
// request on a kept-alive backend connection of its own, and passes the
// response on as it arrives. Sockets are registered once, edge-triggered
// for reading and writing, so a request costs no epoll_ctl and no read
// that finds nothing: a short read means the socket is empty until its
// next event.
//
// An idle connection holds no goroutine and no buffer: its state is an
// lconn of about a hundred bytes in its loop. Buffers (the request's,
// the response head's) are taken from pools while bytes are in flight.
//
// The loops forward what is common: requests with no body or a body
// whose length is known and that fits in the request buffer, to HTTP/1.1
// backends over plain TCP, with every HTTPConfig setting but H2C and TLS
// (the hooks run on the loop: they must not block). A request that needs
// more — a chunked or large body, Expect: 100-continue, an upgrade, a
// queue wait, CONNECT — hands its connection, with the bytes read so far,
// to the goroutine path, which serves it from then on as it serves
// connections from other listeners. The parsing, the forwarding
// decisions (picking, retries, limits, circuit breakers, passive health,
// sticky cookies, forwarding headers) and the answers are the same code
// as the goroutine path's; only the waiting differs.

// Sizes of the engine's buffers.
const (
	engBodyBuf = 64 << 10 // a loop's buffer for response bodies
	engUpBuf   = 16 << 10 // a backend connection's buffer for a response head
	engBatch   = 256      // events taken per epoll_wait
)

// Client connection states.
const (
	stIdle  = iota // waiting for a request
	stHead         // part of a request head arrived
	stBody         // the head arrived, the body is arriving
	stWait         // the request is with a backend (connecting, sending, or waiting for the head)
	stResp         // passing the response body on
	stClose        // writing what is left, then closing
)

// Response body framings.
const (
	bodyNone    = iota // bodyless
	bodyLength         // Content-Length
	bodyChunked        // chunked
	bodyEOF            // delimited by the backend closing
)

var (
	upPool  = sync.Pool{New: func() any { b := make([]byte, 0, engUpBuf); return &b }}
	reqPool = sync.Pool{New: func() any { return new(lreq) }}
	outPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}
)

// getBuf takes a buffer from pool: the handle to give it back with, and
// the buffer, empty.
func getBuf(pool *sync.Pool) (*[]byte, []byte) {
	h := pool.Get().(*[]byte)
	return h, (*h)[:0]
}

// putBuf gives b, taken with handle h, back to pool.
func putBuf(pool *sync.Pool, h *[]byte, b []byte) {
	*h = b[:0]
	pool.Put(h)
}

// engine is a server's set of loops, started by the first Serve on a TCP
// listener and stopped by Shutdown or Close.
type engine struct {
	s       *Server
	mu      sync.Mutex
	started bool
	err     error // why there are no loops
	loops   []*eloop
	wg      sync.WaitGroup
	next    atomic.Uint32
	conns   atomic.Int64 // client connections on the loops
	closing atomic.Bool
	idle    chan struct{} // closed when conns drops to 0 while closing
	inPool  sync.Pool     // *[]byte request buffers of MaxHeaderBytes
	lns     map[*engListener]struct{}
}

// usable reports whether the engine can serve h's requests: not to h2c
// or TLS backends, which the goroutine path's transports handle.
func (e *engine) usable(h *HTTP) bool { return h.h2c == nil && h.tls == nil }

// start starts the loops unless they run; it returns why they cannot.
func (e *engine) start(s *Server) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return e.err
	}
	e.started, e.s = true, s
	for range runtime.GOMAXPROCS(0) {
		l, err := newEloop(e)
		if err != nil {
			e.err = err
			e.stopLocked()
			return err
		}
		l.first = len(e.loops) == 0
		e.loops = append(e.loops, l)
		e.wg.Go(l.run)
	}
	return nil
}

// pick returns the loop for a new connection: in turn.
func (e *engine) pick() *eloop {
	return e.loops[e.next.Add(1)%uint32(len(e.loops))]
}

// broadcast runs fn on every loop's goroutine.
func (e *engine) broadcast(fn func(*eloop)) {
	e.mu.Lock()
	loops := e.loops
	e.mu.Unlock()
	for _, l := range loops {
		l.submit(fn)
	}
}

// gone counts a client connection leaving the loops.
func (e *engine) gone() {
	if e.conns.Add(-1) == 0 && e.closing.Load() {
		e.mu.Lock()
		if e.idle != nil {
			close(e.idle)
			e.idle = nil
		}
		e.mu.Unlock()
	}
}

// shutdown closes idle connections, lets the others finish their request
// and waits for them until ctx ends, when it closes them. It reports
// whether it had to force.
func (e *engine) shutdown(ctx context.Context) bool {
	e.closing.Store(true)
	e.mu.Lock()
	if !e.started || e.err != nil {
		e.mu.Unlock()
		return false
	}
	if e.idle == nil {
		e.idle = make(chan struct{})
	}
	idle := e.idle
	e.mu.Unlock()
	if e.conns.Load() == 0 {
		return false
	}
	e.broadcast(func(l *eloop) { l.closeIdle() })
	select {
	case <-idle:
		return false
	case <-ctx.Done():
		e.kill()
		return true
	}
}

// kill closes every connection now and waits until they are gone.
func (e *engine) kill() {
	e.closing.Store(true)
	e.mu.Lock()
	if !e.started || e.err != nil {
		e.mu.Unlock()
		return
	}
	if e.idle == nil {
		e.idle = make(chan struct{})
	}
	idle := e.idle
	e.mu.Unlock()
	if e.conns.Load() == 0 {
		return
	}
	e.broadcast(func(l *eloop) { l.killAll() })
	<-idle
}

// stop ends the loops for good (their connections must be gone) and
// waits for them.
func (e *engine) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	if e.err == nil {
		e.err = ErrServerClosed
	}
	e.stopLocked()
}

func (e *engine) stopLocked() {
	for _, l := range e.loops {
		l.submit(nil)
	}
	e.wg.Wait()
	e.loops = nil
}

// eloop is one event loop.
type eloop struct {
	e    *engine
	s    *Server
	epfd int
	evfd int
	file *os.File // epfd, waited for in the runtime's poller

	mu       sync.Mutex
	tab      []any    // by descriptor: *lconn, *uconn, *engListener
	incoming []*lconn // added by other loops, not yet listed
	tasks    []func(*eloop)
	stopping bool

	// Owned by the loop's goroutine.
	head    *lconn // the loop's client connections, a doubly linked list
	idle    map[*upstream][]*uconn
	rbuf    []byte
	hrd     bytes.Reader
	hbr     *bufio.Reader
	ubw     *bufio.Writer
	uw      appendWriter
	closing bool // the server is shutting down: no new requests
	first   bool // the first loop, which checks the listeners
}

func newEloop(e *engine) (*eloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	file := os.NewFile(uintptr(epfd), "epoll")
	if err := file.SetReadDeadline(time.Time{}); err != nil {
		file.Close()
		return nil, fmt.Errorf("proxy: epoll descriptor not pollable: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		file.Close()
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := rawsys.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		file.Close()
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l := &eloop{e: e, s: e.s, epfd: epfd, evfd: evfd, file: file, idle: make(map[*upstream][]*uconn),
		rbuf: make([]byte, engBodyBuf), hbr: bufio.NewReaderSize(nil, 4<<10)}
	l.ubw = bufio.NewWriterSize(&l.uw, 4<<10)
	return l, nil
}

// submit runs fn on the loop's goroutine; nil stops the loop.
func (l *eloop) submit(fn func(*eloop)) {
	l.mu.Lock()
	if fn == nil {
		l.stopping = true
	} else {
		l.tasks = append(l.tasks, fn)
	}
	l.mu.Unlock()
	one := [8]byte{1}
	unix.Write(l.evfd, one[:])
}

// setTab records v as descriptor fd's owner; l.mu is held.
func (l *eloop) setTab(fd int, v any) {
	if fd >= len(l.tab) {
		if v == nil {
			return
		}
		n := max(2*len(l.tab), fd+1, 64)
		t := make([]any, n)
		copy(t, l.tab)
		l.tab = t
	}
	l.tab[fd] = v
}

// engineEvents are what every socket is registered for, once.
const engineEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// register adds fd, owned by v, to the loop's epoll set.
func (l *eloop) register(fd int, v any) error {
	l.mu.Lock()
	l.setTab(fd, v)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: engineEvents, Fd: int32(fd)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Lock()
		l.setTab(fd, nil)
		l.mu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// forget drops fd from the table; closing fd leaves the epoll set.
func (l *eloop) forget(fd int) {
	l.mu.Lock()
	l.setTab(fd, nil)
	l.mu.Unlock()
}

// tick is how often the loop looks for expired deadlines: an eighth of
// the shortest timeout, within [5ms, 250ms].
func (l *eloop) tick() time.Duration {
	s, h := l.s, l.s.cfg.Handler
	t := min(s.cfg.ReadTimeout, s.cfg.IdleTimeout, h.dialTimeout, h.respHeaderTimeout, h.idleTimeout)
	if b := s.cfg.BodyIdleTimeout; b > 0 {
		t = min(t, b)
	}
	if r := h.requestTimeout; r > 0 {
		t = min(t, r)
	}
	return min(max(t/8, 5*time.Millisecond), 250*time.Millisecond)
}

// run waits for events and serves them until stopped. The epoll
// descriptor is itself waited for in the runtime's poller, so an idle
// loop parks like a goroutine blocked on a socket; the epoll_wait calls
// here never block.
func (l *eloop) run() {
	defer unix.Close(l.evfd)
	defer l.file.Close()
	raw, err := l.file.SyscallConn()
	if err != nil {
		panic(fmt.Sprintf("proxy: epoll descriptor: %v", err)) // checked by newEloop
	}
	events := make([]unix.EpollEvent, engBatch)
	batch := make([]any, engBatch)
	tick := l.tick()
	next := time.Now().Add(tick)
	l.file.SetReadDeadline(next)
	for {
		var n int
		var werr error
		err := raw.Read(func(fd uintptr) bool {
			n, werr = rawsys.EpollPoll(int(fd), events)
			return n > 0 || werr != nil && werr != unix.EINTR
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) || werr != nil && werr != unix.EINTR {
			panic(fmt.Sprintf("proxy: epoll_wait: %v %v", err, werr)) // EBADF or EINVAL: a bug
		}
		l.mu.Lock()
		for i, ev := range events[:n] {
			if int(ev.Fd) < len(l.tab) {
				batch[i] = l.tab[ev.Fd]
			} else {
				batch[i] = nil
			}
		}
		for _, c := range l.incoming {
			if !c.closed {
				l.list(c)
			}
		}
		clear(l.incoming)
		l.incoming = l.incoming[:0]
		l.mu.Unlock()
		for i, ev := range events[:n] {
			switch x := batch[i].(type) {
			case *lconn:
				if !x.closed {
					l.clientEvent(x, ev.Events)
				}
			case *uconn:
				if !x.closed {
					l.upEvent(x, ev.Events)
				}
			case *engListener:
				x.acceptFrom(l)
			case nil:
				if ev.Fd == int32(l.evfd) {
					var buf [8]byte
					unix.Read(l.evfd, buf[:])
					if l.runTasks() {
						return
					}
				}
			}
			batch[i] = nil
		}
		if now := time.Now(); !now.Before(next) {
			l.sweep(now)
			next = now.Add(tick)
			l.file.SetReadDeadline(next)
		}
	}
}

// runTasks runs what was submitted; it reports whether the loop must
// stop.
func (l *eloop) runTasks() bool {
	l.mu.Lock()
	tasks, stop := l.tasks, l.stopping
	l.tasks = nil
	l.mu.Unlock()
	for _, fn := range tasks {
		fn(l)
	}
	if stop {
		l.closeAllIdleUpstreams()
	}
	return stop
}

// list adds c to the loop's list of client connections.
func (l *eloop) list(c *lconn) {
	c.next = l.head
	if l.head != nil {
		l.head.prev = c
	}
	l.head = c
}

func (l *eloop) unlist(c *lconn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else if l.head == c {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// adopt makes the accepted socket fd a client connection of l. It runs
// on the accepting loop's goroutine, which may not be l's.
func (l *eloop) adopt(fd int, peer netip.AddrPort, ln *engListener) {
	rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c := &lconn{l: l, fd: fd, peer: peer, ln: ln, deadline: time.Now().Add(l.s.cfg.IdleTimeout).UnixNano()}
	c.cw.c = c
	l.e.conns.Add(1)
	l.mu.Lock()
	l.setTab(fd, c)
	l.incoming = append(l.incoming, c)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: engineEvents, Fd: int32(fd)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// The loop will list c; with no events it ends at its deadline.
		ln.log.Warn("proxy: epoll_ctl failed", "err", err)
	}
}

// lconn is a client connection on a loop: all an idle one holds.
type lconn struct {
	l          *eloop
	fd         int
	peer       netip.AddrPort
	ln         *engListener
	prev, next *lconn
	remote     string // peer as text, made when a hook needs it
	in         []byte // the client's bytes; in[off:] not yet used; nil when idle and empty
	inh        *[]byte
	off        int
	out        []byte // bytes the client did not take yet; nil when none
	outh       *[]byte
	r          *lreq // the request being served
	cw         clientWriter
	deadline   int64 // unix nanoseconds; 0: none
	werr       error // writing to the client failed
	state      uint8
	closed     bool
	canRead    bool // the socket may hold bytes: read before waiting
	canWrite   bool
	hup        bool // the client's FIN was reported: read until EOF
	eof        bool // the client sent FIN and it was read
}

// lreq is the state of a request served on a loop; it is pooled.
type lreq struct {
	sc       *srvConn
	rq       request
	reqLen   int    // head and body bytes in the client's buffer
	body     []byte // the body, in the client's buffer
	mem      memBody
	attempt  int
	triedBuf [4]*upstream
	tried    []*upstream
	lastErr  error
	u        *upstream
	uc       *uconn
	t0, t1   time.Time // the attempt's start for OnAttempt, and for the latency
	mayRetry bool

	// The response.
	latency  time.Duration
	failed   bool // 5xx
	reusable bool // the backend connection may be kept
	mode     uint8
	left     int64
	cf       chunkFeed
	clErr    error // writing to the client failed
}

// memBody is a request body already read, for hooks that read r.Body.
type memBody struct{ b []byte }

func (m *memBody) Read(p []byte) (int, error) {
	if len(m.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, m.b)
	m.b = m.b[n:]
	return n, nil
}

func (m *memBody) Close() error { return nil }

// clientWriter is where a loop request's srvConn writes: straight to the
// socket while it takes bytes, the rest kept in the connection's out.
type clientWriter struct{ c *lconn }

func (w *clientWriter) Write(p []byte) (int, error) {
	c := w.c
	if c.werr != nil {
		return 0, c.werr
	}
	n := len(p)
	if len(c.out) == 0 && c.canWrite {
		m, err := rawsys.Write(c.fd, p)
		switch {
		case err == unix.EAGAIN:
			m = 0
			c.canWrite = false
		case err != nil:
			c.werr = fmt.Errorf("proxy: write to client: %w", os.NewSyscallError("write", err))
			return 0, c.werr
		case m < len(p):
			c.canWrite = false
		}
		p = p[m:]
	}
	if len(p) > 0 {
		if c.out == nil {
			c.outh, c.out = getBuf(&outPool)
		}
		c.out = append(c.out, p...)
	}
	return n, nil
}

// flushOut writes what the client did not take yet; it reports whether
// nothing is left.
func (l *eloop) flushOut(c *lconn) bool {
	for len(c.out) > 0 {
		if !c.canWrite || c.werr != nil {
			return false
		}
		m, err := rawsys.Write(c.fd, c.out)
		switch {
		case err == unix.EAGAIN:
			c.canWrite = false
			return false
		case err != nil:
			c.werr = fmt.Errorf("proxy: write to client: %w", os.NewSyscallError("write", err))
			return false
		}
		if m < len(c.out) {
			c.canWrite = false
			c.out = c.out[:copy(c.out, c.out[m:])]
			return false
		}
		c.out = c.out[:0]
	}
	if c.out != nil {
		putBuf(&outPool, c.outh, c.out)
		c.outh, c.out = nil, nil
	}
	return true
}

// clientEvent serves events ev on client connection c.
func (l *eloop) clientEvent(c *lconn, ev uint32) {
	if ev&unix.EPOLLERR != 0 || ev&unix.EPOLLHUP != 0 {
		l.drop(c) // reset, or shut down both ways: nobody to answer
		return
	}
	// Edge-triggered: remember every readiness reported, whatever is
	// done with it now.
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
		c.canRead = true
		c.hup = c.hup || ev&unix.EPOLLRDHUP != 0
	}
	if ev&unix.EPOLLOUT != 0 {
		c.canWrite = true
		if !l.flushOut(c) {
			if c.werr != nil {
				l.drop(c)
			}
			return
		}
		switch c.state {
		case stResp:
			l.pumpBody(c)
			return
		case stClose:
			l.drop(c)
			return
		}
	}
	l.process(c)
}

// process reads and starts requests while the connection waits for one
// and bytes are there.
func (l *eloop) process(c *lconn) {
	for !c.closed && len(c.out) == 0 {
		var more bool
		switch c.state {
		case stIdle, stHead:
			more = l.readHead(c)
		case stBody:
			more = l.readBody(c)
		}
		if !more {
			return
		}
	}
}

// readClient reads what the client sent into c.in. It reports whether
// anything changed (bytes, or the end of the client's stream).
func (l *eloop) readClient(c *lconn) bool {
	if !c.canRead || c.eof {
		return false
	}
	if c.in == nil {
		l.getIn(c)
	}
	if c.off > 0 && c.state != stBody {
		c.in = c.in[:copy(c.in, c.in[c.off:])]
		c.off = 0
	}
	free := cap(c.in) - len(c.in)
	if free == 0 {
		return false
	}
	n, err := rawsys.Read(c.fd, c.in[len(c.in):cap(c.in)])
	switch {
	case err == unix.EAGAIN:
		c.canRead = false
		return false
	case err != nil:
		l.drop(c)
		return false
	case n == 0:
		c.eof, c.canRead = true, false
		return true
	}
	if n < free && !c.hup {
		c.canRead = false // empty until the next event
	}
	c.in = c.in[:len(c.in)+n]
	return true
}

func (l *eloop) getIn(c *lconn) {
	if h, ok := l.e.inPool.Get().(*[]byte); ok {
		c.inh, c.in = h, (*h)[:0]
		return
	}
	b := make([]byte, 0, l.s.cfg.MaxHeaderBytes)
	c.inh, c.in = &b, b
}

func (l *eloop) putIn(c *lconn) {
	if c.in != nil {
		putBuf(&l.e.inPool, c.inh, c.in)
		c.inh, c.in, c.off = nil, nil, 0
	}
}

// headEnd finds the end of the request head at the start of b, as
// h1.ReadHead does: its length, or 0 when it is not all there, or a
// status to refuse it with.
func headEnd(b []byte, limit int) (n, status int) {
	for i, ch := range b {
		if ch != '\n' {
			continue
		}
		if i == 0 || b[i-1] != '\r' {
			return 0, http.StatusBadRequest // bare LF
		}
		if i >= 3 && b[i-2] == '\n' {
			return i + 1, 0
		}
	}
	if len(b) >= limit {
		if bytes.IndexByte(b[:limit], '\n') >= 0 {
			return 0, http.StatusRequestHeaderFieldsTooLarge
		}
		return 0, http.StatusRequestURITooLong
	}
	return 0, 0
}

// readHead waits for a request head and starts its request; it reports
// whether to go on processing.
func (l *eloop) readHead(c *lconn) bool {
	limit := l.s.cfg.MaxHeaderBytes
	var buf []byte
	if c.in != nil {
		buf = c.in[c.off:]
	}
	n, code := headEnd(buf, limit)
	if code != 0 {
		l.refuse(c, code)
		return false
	}
	if n == 0 {
		if c.eof {
			l.drop(c)
			return false
		}
		if len(buf) > 0 && c.state == stIdle {
			c.state = stHead
			c.deadline = time.Now().Add(l.s.cfg.ReadTimeout).UnixNano()
		}
		return l.readClient(c)
	}
	r := l.newReq(c)
	sc := r.sc
	if code := sc.head.Parse(buf[:n]); code != 0 {
		l.refuse(c, code)
		return false
	}
	head := &sc.head
	if !l.fits(head, n) {
		l.handoff(c)
		return false
	}
	cl := max(head.ContentLength, 0)
	if c.off > 0 && c.off+n+int(cl) > cap(c.in) {
		// Make room for the body, and parse again where the head is now.
		c.in = c.in[:copy(c.in, c.in[c.off:])]
		c.off = 0
		sc.head.Parse(c.in[:n])
	}
	r.reqLen = n + int(cl)
	if len(c.in)-c.off < r.reqLen {
		c.state = stBody
		c.deadline = 0
		if b := l.s.cfg.BodyIdleTimeout; b > 0 {
			c.deadline = time.Now().Add(b).UnixNano()
		}
		return true
	}
	l.startRequest(c)
	return true
}

// fits reports whether the loop can serve a request with this head: no
// upgrade, no Expect, no CONNECT, and a body of known length that fits
// in the connection's buffer.
func (l *eloop) fits(head *h1.Head, n int) bool {
	if head.Chunked || head.ExpectContinue || head.Method == http.MethodConnect {
		return false
	}
	if _, ok := head.Header("Upgrade"); ok {
		return false
	}
	return head.ContentLength <= int64(l.s.cfg.MaxHeaderBytes-n)
}

// readBody waits for the rest of a request body; it reports whether to
// go on processing.
func (l *eloop) readBody(c *lconn) bool {
	if len(c.in)-c.off >= c.r.reqLen {
		l.startRequest(c)
		return true
	}
	if c.eof {
		l.drop(c)
		return false
	}
	if !l.readClient(c) {
		return false
	}
	if b := l.s.cfg.BodyIdleTimeout; b > 0 {
		c.deadline = time.Now().Add(b).UnixNano()
	}
	return true
}

// newReq gives c a request state and a srvConn writing to it.
func (l *eloop) newReq(c *lconn) *lreq {
	if c.r != nil {
		return c.r
	}
	r := reqPool.Get().(*lreq)
	s := l.s
	sc, _ := s.pool.Get().(*srvConn)
	if sc == nil {
		sc = newSrvConn()
	}
	sc.s, sc.c, sc.pc = s, nil, nil
	sc.remote = ""
	sc.hijacked = false
	sc.bw, _ = s.bwPool.Get().(*bufio.Writer)
	if sc.bw == nil {
		sc.bw = bufio.NewWriterSize(nil, 8<<10)
	}
	sc.bw.Reset(&c.cw)
	r.sc = sc
	c.r = r
	return r
}

// endReq gives c's request state back.
func (l *eloop) endReq(c *lconn) {
	r := c.r
	if r == nil {
		return
	}
	c.r = nil
	sc := r.sc
	sc.bw.Reset(nil)
	l.s.bwPool.Put(sc.bw)
	sc.bw = nil
	sc.s, sc.body.sc = nil, nil
	l.s.pool.Put(sc)
	cf := r.cf
	*r = lreq{}
	r.cf.line = cf.line[:0]
	reqPool.Put(r)
}

// refuse answers a request the server will not forward and closes.
func (l *eloop) refuse(c *lconn, code int) {
	r := l.newReq(c)
	r.sc.writeRefusal(code) // flushes to c.cw
	l.endReq(c)
	l.closeAfterOut(c)
}

// closeAfterOut closes c once what it holds for the client is written.
func (l *eloop) closeAfterOut(c *lconn) {
	c.state = stClose
	if l.flushOut(c) || c.werr != nil {
		l.drop(c)
		return
	}
	c.deadline = time.Now().Add(l.s.cfg.IdleTimeout).UnixNano()
}

// startRequest starts forwarding the request whose head and body are in
// c.in.
func (l *eloop) startRequest(c *lconn) {
	r := c.r
	sc := r.sc
	if !sc.prepare() {
		l.refuse(c, http.StatusBadRequest)
		return
	}
	h := l.s.cfg.Handler
	req := &sc.req
	head := &sc.head
	hl := r.reqLen - int(max(head.ContentLength, 0))
	if head.ContentLength > 0 {
		r.body = c.in[c.off+hl : c.off+r.reqLen]
		r.mem.b = r.body
		req.Body = &r.mem
	}
	sc.body.left = 0 // read: the connection can be reused
	if h.rewrite != nil || h.modify != nil || h.onAttempt != nil {
		if c.remote == "" {
			c.remote = c.peer.String()
		}
		req.RemoteAddr = c.remote
	}
	rq := &r.rq
	*rq = request{r: req, peer: c.peer.Addr().Unmap()}
	h.begin(sc, rq)
	if rq.hasBody && h.retryBuf > 0 && head.ContentLength <= h.retryBuf {
		rq.buffered = r.body
	}
	r.tried = r.triedBuf[:0]
	c.state = stWait
	l.nextAttempt(c)
}

// nextAttempt starts the request's next attempt.
func (l *eloop) nextAttempt(c *lconn) {
	r := c.r
	h := l.s.cfg.Handler
	rq := &r.rq
	r.attempt++
	u, err := h.beginAttempt(context.Background(), rq, r.tried, r.attempt, false)
	if err == errMustQueue {
		// Waiting is the goroutine path's: it serves the request from
		// its start.
		l.handoff(c)
		return
	}
	if err != nil {
		h.fail(r.sc, rq.r, attemptErr(err, r.lastErr, r.attempt))
		l.responseDone(c)
		return
	}
	r.u = u
	r.mayRetry = r.attempt < h.maxTries && time.Since(rq.start) < h.retryTimeout
	if h.onAttempt != nil {
		r.t0, rq.status, rq.bytes = time.Now(), 0, 0
	}
	u.ep.Start()
	r.t1 = time.Now()
	uc := l.takeIdle(u, r.t1)
	if uc == nil {
		if uc, err = l.dial(u); err != nil {
			u.ep.Done(err, 0)
			res := resFail
			if r.mayRetry {
				res = resRetry // nothing was sent
			}
			l.attemptDone(c, res, fmt.Errorf("proxy: dial %v: %w", u.addr, err))
			return
		}
		uc.c, r.uc = c, uc
		c.deadline = r.t1.Add(h.dialTimeout).UnixNano()
		return // sent once connected
	}
	uc.c, r.uc = c, uc
	l.send(c)
}

// send writes the request to the connected backend connection.
func (l *eloop) send(c *lconn) {
	r := c.r
	h := l.s.cfg.Handler
	uc := r.uc
	dl := r.t1.Add(h.respHeaderTimeout)
	if d := r.rq.deadline; !d.IsZero() && d.Before(dl) {
		dl = d
	}
	c.deadline = dl.UnixNano()
	if err := l.buildRequest(uc, r); err != nil {
		l.closeUp(uc)
		r.uc = nil
		r.u.ep.Done(nil, 0)
		l.attemptDone(c, resFail, err)
		return
	}
	l.sendUp(uc)
}

// buildRequest writes the request's bytes for the backend into uc.pend.
func (l *eloop) buildRequest(uc *uconn, r *lreq) error {
	rq := &r.rq
	h := l.s.cfg.Handler
	if uc.pend == nil {
		uc.pendh, uc.pend = getBuf(&outPool)
	}
	l.uw.b = uc.pend[:0]
	l.ubw.Reset(&l.uw)
	if err := h.writeHead(l.ubw, rq); err != nil {
		return err
	}
	switch {
	case !rq.hasBody:
		writeNoBody(l.ubw, rq.r.Method)
	case rq.buffered != nil:
		writeBuffered(l.ubw, rq.buffered)
	case rq.consumed:
		return errBodyConsumed
	default:
		rq.consumed = true
		writeBuffered(l.ubw, r.body)
	}
	l.ubw.Flush()
	uc.pend, l.uw.b = l.uw.b, nil
	uc.poff = 0
	return nil
}

// appendWriter appends what is written to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// uconn is a connection to a backend owned by a loop.
type uconn struct {
	fd         int
	u          *upstream
	c          *lconn // the client whose request it serves; nil while idle
	closed     bool
	connecting bool
	canRead    bool
	canWrite   bool
	hup        bool // the backend's FIN was reported: read until EOF
	reused     bool
	idle       bool // in the loop's idle lists
	idleAt     int64
	pend       []byte // request bytes; pend[poff:] not yet written
	pendh      *[]byte
	poff       int
	buf        []byte // bytes read; buf[boff:] not yet used
	bufh       *[]byte
	boff       int
	head       respHead
	scratch    []byte
}

// dial opens a connection to u; the loop hears when it is made.
func (l *eloop) dial(u *upstream) (*uconn, error) {
	fd, err := rawsys.Dial(u.addr)
	if err != nil {
		return nil, os.NewSyscallError("connect", err)
	}
	rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	uc := &uconn{fd: fd, u: u, connecting: true}
	if err := l.register(fd, uc); err != nil {
		rawsys.Close(fd)
		return nil, err
	}
	return uc, nil
}

// takeIdle returns a kept-alive connection to u, or nil.
func (l *eloop) takeIdle(u *upstream, now time.Time) *uconn {
	list := l.idle[u]
	cutoff := now.Add(-l.s.cfg.Handler.idleTimeout).UnixNano()
	for n := len(list); n > 0; n = len(list) {
		uc := list[n-1]
		list[n-1] = nil
		list = list[:n-1]
		if uc.idleAt > cutoff {
			l.idle[u] = list
			uc.idle = false
			u.loopIdle.Add(-1)
			return uc
		}
		l.closeUp(uc)
	}
	if list != nil {
		delete(l.idle, u)
	}
	return nil
}

// putIdle keeps uc for u's next request, or closes it.
func (l *eloop) putIdle(uc *uconn, now time.Time) {
	u := uc.u
	uc.c = nil
	uc.reused = true
	uc.idleAt = now.UnixNano()
	l.releaseUpBuf(uc)
	if uc.hup || !u.ready() || l.closing || len(l.idle[u]) >= l.s.cfg.Handler.maxIdle {
		l.closeUp(uc)
		return
	}
	l.idle[u] = append(l.idle[u], uc)
	uc.idle = true
	u.loopIdle.Add(1)
}

func (l *eloop) releaseUpBuf(uc *uconn) {
	if uc.buf != nil {
		putBuf(&upPool, uc.bufh, uc.buf)
		uc.bufh, uc.buf, uc.boff = nil, nil, 0
	}
	if uc.pend != nil {
		putBuf(&outPool, uc.pendh, uc.pend)
		uc.pendh, uc.pend, uc.poff = nil, nil, 0
	}
}

// closeUp closes a backend connection.
func (l *eloop) closeUp(uc *uconn) {
	if uc.closed {
		return
	}
	uc.closed = true
	uc.c = nil
	if uc.idle {
		uc.idle = false
		uc.u.loopIdle.Add(-1)
	}
	l.forget(uc.fd)
	rawsys.Close(uc.fd)
	l.releaseUpBuf(uc)
}

// dropIdle closes an idle connection the backend closed or wrote to.
func (l *eloop) dropIdle(uc *uconn) {
	list := l.idle[uc.u]
	for i, v := range list {
		if v == uc {
			list = append(list[:i], list[i+1:]...)
			list = list[:len(list):len(list)]
			break
		}
	}
	if len(list) == 0 {
		delete(l.idle, uc.u)
	} else {
		l.idle[uc.u] = list
	}
	l.closeUp(uc)
}

func (l *eloop) closeAllIdleUpstreams() {
	for u, list := range l.idle {
		for _, uc := range list {
			l.closeUp(uc)
		}
		delete(l.idle, u)
	}
}

// upEvent serves events ev on backend connection uc.
func (l *eloop) upEvent(uc *uconn, ev uint32) {
	// Edge-triggered: remember every readiness reported, whatever is
	// done with it now.
	if ev&unix.EPOLLOUT != 0 {
		uc.canWrite = true
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		uc.canRead = true
		uc.hup = uc.hup || ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
	}
	c := uc.c
	if c == nil {
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.dropIdle(uc) // closed by the backend, or it spoke out of turn
		}
		return
	}
	if uc.connecting {
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.dialFailed(c, os.NewSyscallError("connect", rawsys.SocketError(uc.fd, unix.ECONNREFUSED)))
			return
		}
		if ev&unix.EPOLLOUT == 0 {
			return
		}
		uc.connecting = false
		l.send(c)
		return
	}
	if ev&unix.EPOLLERR != 0 {
		err := os.NewSyscallError("read", rawsys.SocketError(uc.fd, unix.ECONNRESET))
		if c.state == stResp {
			l.finishResp(c, err, nil)
		} else {
			l.upFailed(c, err)
		}
		return
	}
	switch c.state {
	case stWait:
		if uc.poff < len(uc.pend) {
			l.sendUp(uc)
			return
		}
		l.readRespHead(c)
	case stResp:
		l.pumpBody(c)
	}
}

// sendUp writes the request's bytes left; once they are out it reads the
// response if it is there.
func (l *eloop) sendUp(uc *uconn) {
	c := uc.c
	for uc.poff < len(uc.pend) {
		if !uc.canWrite {
			return
		}
		n, err := rawsys.Write(uc.fd, uc.pend[uc.poff:])
		switch {
		case err == unix.EAGAIN:
			uc.canWrite = false
			return
		case err != nil:
			l.upFailed(c, os.NewSyscallError("write", err))
			return
		}
		if uc.poff += n; uc.poff < len(uc.pend) {
			uc.canWrite = false
		}
	}
	if uc.canRead {
		l.readRespHead(c)
	}
}

// dialFailed ends an attempt whose connection could not be made.
func (l *eloop) dialFailed(c *lconn, err error) {
	r := c.r
	l.closeUp(r.uc)
	r.uc = nil
	err = fmt.Errorf("proxy: dial %v: %w", r.u.addr, err)
	r.u.ep.Done(err, 0)
	res := resFail
	if r.mayRetry {
		res = resRetry // nothing was sent
	}
	l.attemptDone(c, res, err)
}

// upFailed ends an attempt whose request could not be sent or whose
// response head did not come, as the goroutine path's try does.
func (l *eloop) upFailed(c *lconn, err error) {
	r := c.r
	uc := r.uc
	reused := uc.reused
	l.closeUp(uc)
	r.uc = nil
	ep := r.u.ep
	// A keep-alive connection closed by the backend is not its failure;
	// a timeout, a refused or reset fresh connection, or a protocol
	// violation is.
	if !reused || isTimeout(err) || errors.Is(err, ErrUpstreamProtocol) {
		ep.Done(err, 0)
	} else {
		ep.Done(nil, 0)
	}
	rq := &r.rq
	if r.mayRetry && rq.replayable() && rq.idempotent && !errors.Is(err, ErrUpstreamProtocol) {
		if rq.buffered == nil && rq.hasBody {
			rq.consumed = true
		}
		l.attemptDone(c, resRetry, err)
		return
	}
	l.attemptDone(c, resFail, err)
}

// respHeadEnd finds the end of a response head at the start of b: its
// length, or 0. A bare LF ends lines here too; readHead refuses it.
func respHeadEnd(b []byte) int {
	for i := 1; i < len(b); i++ {
		if b[i] == '\n' && (b[i-1] == '\n' || i >= 2 && b[i-1] == '\r' && b[i-2] == '\n') {
			return i + 1
		}
	}
	return 0
}

// readRespHead reads the response head and passes it on.
func (l *eloop) readRespHead(c *lconn) {
	r := c.r
	uc := r.uc
	h := l.s.cfg.Handler
	for interim := 0; ; {
		if uc.buf != nil {
			if n := respHeadEnd(uc.buf[uc.boff:]); n > 0 {
				l.hrd.Reset(uc.buf[uc.boff : uc.boff+n])
				l.hbr.Reset(&l.hrd)
				err := readHead(l.hbr, &uc.head, &uc.scratch, h.maxHead)
				l.hbr.Reset(nil)
				if err != nil {
					l.upFailed(c, protoErr(err))
					return
				}
				uc.boff += n
				if st := uc.head.status; st < 200 && st != http.StatusSwitchingProtocols {
					if interim++; interim >= 16 {
						l.upFailed(c, fmt.Errorf("%w: too many interim responses", ErrUpstreamProtocol))
						return
					}
					continue
				}
				l.gotHead(c)
				return
			}
			if len(uc.buf)-uc.boff > h.maxHead {
				l.upFailed(c, protoErr(errHeaderTooBig))
				return
			}
		}
		if !uc.canRead {
			return
		}
		if uc.buf == nil {
			uc.bufh, uc.buf = getBuf(&upPool)
		}
		if uc.boff > 0 {
			uc.buf = uc.buf[:copy(uc.buf, uc.buf[uc.boff:])]
			uc.boff = 0
		}
		if len(uc.buf) == cap(uc.buf) {
			uc.buf = append(uc.buf, 0)[:len(uc.buf)] // grow, up to maxHead
		}
		free := cap(uc.buf) - len(uc.buf)
		n, err := rawsys.Read(uc.fd, uc.buf[len(uc.buf):cap(uc.buf)])
		switch {
		case err == unix.EAGAIN:
			uc.canRead = false
			return
		case err != nil:
			l.upFailed(c, os.NewSyscallError("read", err))
			return
		case n == 0:
			err := io.EOF
			if len(uc.buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			l.upFailed(c, err)
			return
		}
		if n < free && !uc.hup {
			uc.canRead = false
		}
		uc.buf = uc.buf[:len(uc.buf)+n]
	}
}

// gotHead passes a final response head on and starts on its body, as
// the goroutine path's try does.
func (l *eloop) gotHead(c *lconn) {
	r := c.r
	uc := r.uc
	h := l.s.cfg.Handler
	rq := &r.rq
	head := &uc.head
	ep := r.u.ep
	now := time.Now()
	r.latency = now.Sub(r.t1)
	rq.status = head.status
	r.failed = head.status >= 500
	if r.failed && r.mayRetry && h.retryStatus[head.status] && rq.idempotent && rq.replayable() {
		l.closeUp(uc)
		r.uc = nil
		ep.Done(errStatus(head.status), r.latency)
		l.attemptDone(c, resRetry, errStatus(head.status))
		return
	}
	if head.status == http.StatusSwitchingProtocols {
		// The loop forwards no Upgrade.
		l.closeUp(uc)
		r.uc = nil
		ep.Done(ErrUpstreamProtocol, r.latency)
		l.attemptDone(c, resFail, fmt.Errorf("%w: unsolicited 101 Switching Protocols", ErrUpstreamProtocol))
		return
	}
	bodyless := head.bodyless(rq.r.Method == http.MethodHead)
	hdr := h.passHead(r.sc, rq, r.u, head, bodyless)
	r.reusable = !head.closeConn
	switch {
	case bodyless:
		r.mode = bodyNone
	case head.contentLength >= 0:
		r.mode, r.left = bodyLength, head.contentLength
	case head.chunked:
		r.mode = bodyChunked
		r.cf.reset(h.maxHead, hdr)
	default:
		r.mode = bodyEOF
		r.reusable = false // delimited by close
	}
	c.state = stResp
	c.deadline = 0
	if !rq.deadline.IsZero() {
		c.deadline = rq.deadline.UnixNano()
	}
	if rest := uc.buf[uc.boff:]; len(rest) > 0 && r.mode != bodyNone {
		uc.boff = len(uc.buf)
		if err := l.deliver(c, rest); err != nil {
			l.finishResp(c, err, nil)
			return
		}
	}
	l.pumpBody(c)
}

// bodyDone reports whether the response body was passed on whole.
func (r *lreq) bodyDone() bool {
	switch r.mode {
	case bodyLength:
		return r.left == 0
	case bodyChunked:
		return r.cf.done()
	case bodyEOF:
		return false
	}
	return true
}

// deliver passes response body bytes p on to the client. It returns an
// upstream error (bad chunked framing); a failed write to the client is
// kept in r.clErr. Bytes beyond the body's end make the backend
// connection unusable.
func (l *eloop) deliver(c *lconn, p []byte) error {
	r := c.r
	sc := r.sc
	switch r.mode {
	case bodyLength:
		n := min(int64(len(p)), r.left)
		if n < int64(len(p)) {
			r.reusable = false
		}
		r.left -= n
		r.rq.bytes += n
		if _, err := sc.Write(p[:n]); err != nil {
			r.clErr = err
		}
	case bodyChunked:
		n, err := r.cf.feed(p, r.writeData)
		if r.clErr != nil {
			return nil
		}
		if err != nil {
			return protoErr(err)
		}
		if n < len(p) {
			r.reusable = false
		}
	case bodyEOF:
		r.rq.bytes += int64(len(p))
		if _, err := sc.Write(p); err != nil {
			r.clErr = err
		}
	default:
		r.reusable = false
	}
	return nil
}

// writeData passes decoded chunk data on; it is the chunkFeed's sink.
func (r *lreq) writeData(p []byte) error {
	r.rq.bytes += int64(len(p))
	if _, err := r.sc.Write(p); err != nil {
		r.clErr = err
		return err
	}
	return nil
}

// pumpBody passes the response body on while the client takes it and the
// backend has more.
func (l *eloop) pumpBody(c *lconn) {
	r := c.r
	uc := r.uc
	for {
		if r.clErr != nil || c.werr != nil {
			l.finishResp(c, nil, cmpOr(r.clErr, c.werr))
			return
		}
		if r.bodyDone() {
			// The backend connection is back in the pool before the
			// client has the end of the answer (responseDone sends it).
			l.finishResp(c, nil, nil)
			return
		}
		if err := r.sc.bw.Flush(); err != nil {
			r.clErr = err
			continue
		}
		if !l.flushOut(c) {
			if c.werr != nil {
				continue
			}
			return // the client's turn: its EPOLLOUT resumes
		}
		if !uc.canRead {
			return
		}
		n, err := rawsys.Read(uc.fd, l.rbuf)
		switch {
		case err == unix.EAGAIN:
			uc.canRead = false
			return
		case err != nil:
			l.finishResp(c, os.NewSyscallError("read", err), nil)
			return
		case n == 0:
			if r.mode == bodyEOF {
				r.mode = bodyNone // ended: the client's framing is closed below
				continue
			}
			l.finishResp(c, io.ErrUnexpectedEOF, nil)
			return
		}
		if n < len(l.rbuf) && !uc.hup {
			uc.canRead = false
		}
		if err := l.deliver(c, l.rbuf[:n]); err != nil {
			l.finishResp(c, err, nil)
			return
		}
	}
}

func cmpOr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// finishResp ends an attempt whose head was passed on: with upErr the
// backend cut the body short, with clErr the client could not take it.
func (l *eloop) finishResp(c *lconn, upErr, clErr error) {
	r := c.r
	uc := r.uc
	ep := r.u.ep
	switch {
	case upErr != nil:
		ep.Done(upErr, r.latency)
	case r.failed:
		ep.Done(errStatus(r.rq.status), r.latency)
	default:
		ep.Done(nil, r.latency)
	}
	if upErr == nil && clErr == nil && r.reusable && uc.boff == len(uc.buf) {
		l.putIdle(uc, time.Now())
	} else {
		l.closeUp(uc)
	}
	r.uc = nil
	if upErr != nil {
		l.s.cfg.Handler.log.Debug("proxy: response body from backend cut short", "backend", r.u.addr, "err", upErr)
		l.attemptDone(c, resAbort, upErr)
		return
	}
	if clErr != nil && c.werr == nil {
		c.werr = clErr
	}
	l.attemptDone(c, resDone, nil)
}

// attemptDone ends an attempt as the goroutine path's serve does: the
// answer is done, the client connection aborted, an error answered, or
// the request tried again.
func (l *eloop) attemptDone(c *lconn, res int, err error) {
	r := c.r
	h := l.s.cfg.Handler
	h.endAttempt(&r.rq, r.u, r.attempt, r.t0, res, err)
	switch res {
	case resDone:
		l.responseDone(c)
	case resAbort:
		l.drop(c)
	case resFail:
		h.fail(r.sc, r.rq.r, err)
		l.responseDone(c)
	case resRetry:
		r.lastErr = err
		r.tried = append(r.tried, r.u)
		r.rq.sticky = nil
		h.log.Debug("proxy: retrying on another backend", "backend", r.u.addr, "err", err, "attempt", r.attempt)
		r.u = nil
		l.nextAttempt(c)
	}
}

// responseDone ends a request whose answer was written (to c.out or the
// socket), and goes on to the next.
func (l *eloop) responseDone(c *lconn) {
	r := c.r
	sc := r.sc
	if !sc.wrote {
		writeError(sc, http.StatusBadGateway, "proxy: bad gateway\n")
	}
	if sc.chunked {
		sc.writeLastChunk()
	}
	sc.bw.Flush()
	closeConn := sc.closeConn || l.closing || l.s.g.Closing()
	c.off += r.reqLen
	l.endReq(c)
	if c.werr != nil {
		l.drop(c)
		return
	}
	if closeConn {
		l.closeAfterOut(c)
		return
	}
	c.state = stIdle
	c.deadline = time.Now().Add(l.s.cfg.IdleTimeout).UnixNano()
	if c.off == len(c.in) {
		l.putIn(c)
	}
	if l.flushOut(c) {
		l.process(c)
	} else if c.werr != nil {
		l.drop(c)
	}
}

// drop closes a client connection now, ending the request it has with a
// backend.
func (l *eloop) drop(c *lconn) {
	if c.closed {
		return
	}
	if r := c.r; r != nil {
		if r.uc != nil {
			l.closeUp(r.uc)
			r.uc = nil
			if c.state == stWait || c.state == stResp {
				// The client went away (or the server is closing): not
				// the backend's failure.
				r.u.ep.Done(nil, 0)
				l.s.cfg.Handler.endAttempt(&r.rq, r.u, r.attempt, r.t0, resDone, nil)
			}
		}
		l.endReq(c)
	}
	l.release(c)
	rawsys.Close(c.fd)
	l.e.gone()
}

// release takes c off the loop and frees its buffers; the caller closes
// or hands over the descriptor.
func (l *eloop) release(c *lconn) {
	c.closed = true
	l.forget(c.fd)
	l.unlist(c)
	l.putIn(c)
	if c.out != nil {
		putBuf(&outPool, c.outh, c.out)
		c.outh, c.out = nil, nil
	}
}

// handoff gives c, with the bytes it read and did not use, to the
// goroutine path.
func (l *eloop) handoff(c *lconn) {
	var pre []byte
	if c.in != nil {
		pre = bytes.Clone(c.in[c.off:])
	}
	if r := c.r; r != nil && r.uc != nil {
		l.closeUp(r.uc)
		r.uc = nil
	}
	l.endReq(c)
	l.release(c)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	f := os.NewFile(uintptr(c.fd), "")
	nc, err := net.FileConn(f) // a duplicate, in the runtime's poller
	f.Close()
	l.e.gone()
	if err != nil {
		c.ln.log.Warn("proxy: cannot hand a connection over", "err", err)
		return
	}
	c.ln.give(&preConn{Conn: nc, pre: pre})
}

// closeIdle closes the connections waiting for a request (Shutdown);
// the others close after their answer.
func (l *eloop) closeIdle() {
	l.closing = true
	for c := l.head; c != nil; {
		next := c.next
		if c.state == stIdle && (c.in == nil || c.off == len(c.in)) {
			l.drop(c)
		}
		c = next
	}
	l.closeAllIdleUpstreams()
}

// killAll closes every connection now (Close).
func (l *eloop) killAll() {
	l.closing = true
	for c := l.head; c != nil; {
		next := c.next
		l.drop(c)
		c = next
	}
	l.closeAllIdleUpstreams()
}

// sweep ends what passed its deadline, and closes backend connections
// idle for too long or to members that are not ready.
func (l *eloop) sweep(now time.Time) {
	if l.first {
		l.e.checkListeners()
	}
	ns := now.UnixNano()
	for c := l.head; c != nil; {
		next := c.next
		if c.deadline != 0 && ns >= c.deadline {
			l.expire(c)
		}
		c = next
	}
	cutoff := now.Add(-l.s.cfg.Handler.idleTimeout).UnixNano()
	for u, list := range l.idle {
		ready := u.ready()
		keep := list[:0]
		for _, uc := range list {
			if ready && uc.idleAt > cutoff {
				keep = append(keep, uc)
			} else {
				l.closeUp(uc)
			}
		}
		clear(list[len(keep):])
		if len(keep) == 0 {
			delete(l.idle, u)
		} else {
			l.idle[u] = keep
		}
	}
}

// expire ends what c was waiting for when its deadline passed.
func (l *eloop) expire(c *lconn) {
	timeout := fmt.Errorf("proxy: %w", os.ErrDeadlineExceeded)
	switch c.state {
	case stWait:
		if uc := c.r.uc; uc != nil && uc.connecting {
			l.dialFailed(c, timeout)
		} else if uc != nil {
			l.upFailed(c, timeout)
		}
	case stResp:
		l.finishResp(c, timeout, nil)
	default:
		l.drop(c) // idle, a head or body too slow, or a client not reading
	}
}

// engListener accepts connections on the loops (its socket is in every
// loop's epoll set, one woken per connection) and returns those handed
// over to the goroutine path from Accept, which serve.Group calls.
type engListener struct {
	*net.TCPListener
	lraw  syscall.RawConn // the listener's, to see it closed by its owner
	e     *engine
	file  *os.File // a duplicate of the listener's descriptor, for the loops
	fd    int
	log   interface{ Warn(string, ...any) }
	conns chan net.Conn
	done  chan struct{}

	mu     sync.RWMutex // held to accept, and to close
	closed bool
	err    error // a failure of accept4 that will not pass
	pause  atomic.Int64
}

// engineListener returns ln wrapped for the engine, or nil when the
// engine cannot serve this server's requests.
func (s *Server) engineListener(ln *net.TCPListener) net.Listener {
	if s.noEngine || !s.eng.usable(s.cfg.Handler) {
		return nil
	}
	if err := s.eng.start(s); err != nil {
		return nil
	}
	lraw, err := ln.SyscallConn()
	if err != nil {
		return nil
	}
	dup := -1
	if err := lraw.Control(func(fd uintptr) { dup, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dup < 0 {
		return nil
	}
	el := &engListener{TCPListener: ln, lraw: lraw, e: &s.eng, file: os.NewFile(uintptr(dup), "listener"), fd: dup,
		log: s.logger(), conns: make(chan net.Conn, 64), done: make(chan struct{})}
	s.eng.mu.Lock()
	loops := s.eng.loops
	if s.eng.lns == nil {
		s.eng.lns = make(map[*engListener]struct{})
	}
	s.eng.lns[el] = struct{}{}
	s.eng.mu.Unlock()
	for _, l := range loops {
		l.mu.Lock()
		l.setTab(dup, el)
		l.mu.Unlock()
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(dup)}
		if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, dup, &ev); err != nil {
			el.Close()
			return nil
		}
	}
	return el
}

// Accept returns the next connection handed over to the goroutine path.
func (el *engListener) Accept() (net.Conn, error) {
	select {
	case c := <-el.conns:
		return c, nil
	case <-el.done:
		el.mu.RLock()
		err := el.err
		el.mu.RUnlock()
		if err != nil {
			return nil, err
		}
		return nil, net.ErrClosed
	}
}

// give queues c for Accept without blocking the loop.
func (el *engListener) give(c net.Conn) {
	select {
	case el.conns <- c:
	default:
		go func() {
			select {
			case el.conns <- c:
			case <-el.done:
				c.Close()
			}
		}()
	}
}

// Close stops accepting and closes the listener.
func (el *engListener) Close() error {
	el.mu.Lock()
	if el.closed {
		el.mu.Unlock()
		return nil
	}
	el.closed = true
	el.e.mu.Lock()
	loops := el.e.loops
	delete(el.e.lns, el)
	el.e.mu.Unlock()
	for _, l := range loops {
		rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, el.fd, nil)
		l.mu.Lock()
		if el.fd < len(l.tab) && l.tab[el.fd] == el {
			l.tab[el.fd] = nil
		}
		l.mu.Unlock()
	}
	el.file.Close()
	err := el.TCPListener.Close()
	close(el.done)
	el.mu.Unlock()
	for {
		select {
		case c := <-el.conns:
			c.Close()
		default:
			return err
		}
	}
}

// fail stops the loops accepting on el and makes Accept return err.
func (el *engListener) fail(err error) {
	el.mu.Lock()
	defer el.mu.Unlock()
	if el.closed {
		return
	}
	el.closed, el.err = true, err
	el.e.mu.Lock()
	for _, l := range el.e.loops {
		rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, el.fd, nil)
	}
	el.e.mu.Unlock()
	el.file.Close()
	close(el.done)
}

// checkListeners fails the listeners their owners closed: the loops
// accept on a duplicate of the descriptor, which closing the listener
// does not close. It runs on the first loop at every sweep.
func (e *engine) checkListeners() {
	e.mu.Lock()
	var gone []*engListener
	for el := range e.lns {
		if el.lraw.Control(func(uintptr) {}) != nil {
			gone = append(gone, el)
			delete(e.lns, el)
		}
	}
	e.mu.Unlock()
	for _, el := range gone {
		el.fail(fmt.Errorf("proxy: accept: %w", net.ErrClosed))
	}
}

// acceptFrom accepts what is waiting, on loop lp's goroutine, and gives
// the connections to the loops in turn.
func (el *engListener) acceptFrom(lp *eloop) {
	for range 64 {
		el.mu.RLock()
		if el.closed {
			el.mu.RUnlock()
			return
		}
		fd, peer, err := rawsys.Accept(el.fd)
		el.mu.RUnlock()
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.ECONNABORTED, unix.EINTR:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			el.failed(lp, err)
			return
		default:
			el.fail(fmt.Errorf("proxy: accept: %w", os.NewSyscallError("accept4", err)))
			return
		}
		el.pause.Store(0)
		if el.e.closing.Load() {
			rawsys.Close(fd)
			continue
		}
		el.e.pick().adopt(fd, peer, el)
	}
}

// failed pauses accepting on lp after err (out of descriptors or
// memory): the listener stays readable, so the loop would spin. It
// leaves lp's epoll set (an exclusive registration cannot be modified)
// and joins again after a pause that doubles from 5ms to 1s while errors
// go on.
func (el *engListener) failed(lp *eloop, err error) {
	pause := min(max(2*time.Duration(el.pause.Load()), 5*time.Millisecond), time.Second)
	el.pause.Store(int64(pause))
	el.log.Warn("proxy: accept failed; retrying", "err", os.NewSyscallError("accept4", err), "in", pause)
	el.mu.RLock()
	defer el.mu.RUnlock()
	if el.closed || rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, el.fd, nil) != nil {
		return
	}
	time.AfterFunc(pause, func() {
		el.mu.RLock()
		defer el.mu.RUnlock()
		if !el.closed {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(el.fd)}
			rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, el.fd, &ev)
		}
	})
}
