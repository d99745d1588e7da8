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
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/evloop"
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
// lconn of about two hundred bytes in its loop. Buffers (the request's,
// the response head's) are taken from pools while bytes are in flight.
//
// The loops, the listeners and the client connections' basics (buffers,
// reads, writes, readiness) are internal/evloop's Engine; this file is
// what the proxy does on a loop, its evloop.Handler (eloop): requests,
// backend connections and responses.
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
)

// Client connection states (lconn.State).
const (
	stIdle = iota // waiting for a request
	stHead        // part of a request head arrived
	stBody        // the head arrived, the body is arriving
	stWait        // the request is with a backend (connecting, sending, or waiting for the head)
	stResp        // passing the response body on
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
)

// engine is a server's set of loops (internal/evloop), started by the
// first Serve on a TCP listener and stopped by Shutdown or Close.
type engine = evloop.Engine[lpart]

// lconn is a client connection on a loop: all an idle one holds.
type lconn = evloop.Conn[lpart]

// lpart is the proxy's part of a client connection on a loop.
type lpart struct {
	r      *lreq  // the request being served
	remote string // the peer as text, made when a hook needs it
}

// engineListener returns ln wrapped for the engine, or nil when the
// engine cannot serve this server's requests: not to h2c or TLS
// backends, which the goroutine path's transports handle.
func (s *Server) engineListener(ln *net.TCPListener) net.Listener {
	h := s.cfg.Handler
	if s.noEngine || h.h2c != nil || h.tls != nil {
		return nil
	}
	return s.eng.Listener(ln, evloop.Config[lpart]{
		Name:        "proxy",
		NewHandler:  s.newEloop,
		InSize:      s.cfg.MaxHeaderBytes,
		IdleTimeout: s.cfg.IdleTimeout,
		Tick:        s.tick(),
		Logger:      s.logger(),
	})
}

// eloop is the proxy's part of one event loop: its evloop.Handler.
type eloop struct {
	lp   *evloop.Loop[lpart]
	s    *Server
	idle map[*upstream][]*uconn
	rbuf []byte
	hrd  bytes.Reader
	hbr  *bufio.Reader
	ubw  *bufio.Writer
	uw   appendWriter
}

func (s *Server) newEloop(lp *evloop.Loop[lpart]) evloop.Handler[lpart] {
	l := &eloop{lp: lp, s: s, idle: make(map[*upstream][]*uconn),
		rbuf: make([]byte, engBodyBuf), hbr: bufio.NewReaderSize(nil, 4<<10)}
	l.ubw = bufio.NewWriterSize(&l.uw, 4<<10)
	return l
}

// tick is how often the loops look for expired deadlines: an eighth of
// the shortest timeout.
func (s *Server) tick() time.Duration {
	h := s.cfg.Handler
	t := min(s.cfg.ReadTimeout, s.cfg.IdleTimeout, h.dialTimeout, h.respHeaderTimeout, h.idleTimeout)
	if b := s.cfg.BodyIdleTimeout; b > 0 {
		t = min(t, b)
	}
	if r := h.requestTimeout; r > 0 {
		t = min(t, r)
	}
	return t / 8
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

// Ready serves client connection c when it may be read or was written
// to (evloop.Handler).
func (l *eloop) Ready(c *lconn, wrote bool) {
	if c.State == stResp {
		if wrote {
			l.pumpBody(c)
		}
		return
	}
	l.process(c)
}

// Event serves events ev on a backend connection (evloop.Handler).
func (l *eloop) Event(v any, ev uint32) {
	if uc, ok := v.(*uconn); ok && !uc.closed {
		l.upEvent(uc, ev)
	}
}

// Idle reports whether c waits for a request with nothing read: Shutdown
// closes it (evloop.Handler).
func (l *eloop) Idle(c *lconn) bool {
	return c.State == stIdle && (c.In == nil || c.Off == len(c.In))
}

// Close closes the loop's idle backend connections (evloop.Handler).
func (l *eloop) Close() { l.closeAllIdleUpstreams() }

// Release ends the request c has with a backend, c being closed
// (evloop.Handler).
func (l *eloop) Release(c *lconn) {
	r := c.X.r
	if r == nil {
		return
	}
	if r.uc != nil {
		l.closeUp(r.uc)
		r.uc = nil
		if c.State == stWait || c.State == stResp {
			// The client went away (or the server is closing): not
			// the backend's failure.
			r.u.ep.Done(nil, 0)
			l.s.cfg.Handler.endAttempt(&r.rq, r.u, r.attempt, r.t0, resDone, nil)
		}
	}
	l.endReq(c)
}

// drop closes a client connection now, ending the request it has with a
// backend.
func (l *eloop) drop(c *lconn) { l.lp.Drop(c) }

// handoff gives c, with the bytes it read and did not use, to the
// goroutine path.
func (l *eloop) handoff(c *lconn) {
	if r := c.X.r; r != nil && r.uc != nil {
		l.closeUp(r.uc)
		r.uc = nil
	}
	l.endReq(c)
	l.lp.Handoff(c)
}

// process reads and starts requests while the connection waits for one
// and bytes are there.
func (l *eloop) process(c *lconn) {
	for !c.Closed && len(c.Out) == 0 {
		var more bool
		switch c.State {
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

// readHead waits for a request head and starts its request; it reports
// whether to go on processing.
func (l *eloop) readHead(c *lconn) bool {
	limit := l.s.cfg.MaxHeaderBytes
	var buf []byte
	if c.In != nil {
		buf = c.In[c.Off:]
	}
	n, code := evloop.HeadEnd(buf, limit)
	if code != 0 {
		l.refuse(c, code)
		return false
	}
	if n == 0 {
		if c.EOF {
			l.drop(c)
			return false
		}
		if len(buf) > 0 && c.State == stIdle {
			c.State = stHead
			c.Deadline = time.Now().Add(l.s.cfg.ReadTimeout).UnixNano()
		}
		return l.lp.ReadIn(c, c.State != stBody)
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
	if c.Off > 0 && c.Off+n+int(cl) > cap(c.In) {
		// Make room for the body, and parse again where the head is now.
		c.In = c.In[:copy(c.In, c.In[c.Off:])]
		c.Off = 0
		sc.head.Parse(c.In[:n])
	}
	r.reqLen = n + int(cl)
	if len(c.In)-c.Off < r.reqLen {
		c.State = stBody
		c.Deadline = 0
		if b := l.s.cfg.BodyIdleTimeout; b > 0 {
			c.Deadline = time.Now().Add(b).UnixNano()
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
	if len(c.In)-c.Off >= c.X.r.reqLen {
		l.startRequest(c)
		return true
	}
	if c.EOF {
		l.drop(c)
		return false
	}
	if !l.lp.ReadIn(c, c.State != stBody) {
		return false
	}
	if b := l.s.cfg.BodyIdleTimeout; b > 0 {
		c.Deadline = time.Now().Add(b).UnixNano()
	}
	return true
}

// newReq gives c a request state and a srvConn writing to it.
func (l *eloop) newReq(c *lconn) *lreq {
	if c.X.r != nil {
		return c.X.r
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
	sc.bw.Reset(&c.W)
	r.sc = sc
	c.X.r = r
	return r
}

// endReq gives c's request state back.
func (l *eloop) endReq(c *lconn) {
	r := c.X.r
	if r == nil {
		return
	}
	c.X.r = nil
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
	r.sc.writeRefusal(code) // flushes to c.W
	l.endReq(c)
	l.lp.CloseAfterOut(c)
}

// startRequest starts forwarding the request whose head and body are in
// c.In.
func (l *eloop) startRequest(c *lconn) {
	r := c.X.r
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
		r.body = c.In[c.Off+hl : c.Off+r.reqLen]
		r.mem.b = r.body
		req.Body = &r.mem
	}
	sc.body.left = 0 // read: the connection can be reused
	if h.rewrite != nil || h.modify != nil || h.onAttempt != nil {
		if c.X.remote == "" {
			c.X.remote = c.Peer.String()
		}
		req.RemoteAddr = c.X.remote
	}
	rq := &r.rq
	*rq = request{r: req, peer: c.Peer.Addr().Unmap()}
	h.begin(sc, rq)
	if rq.hasBody && h.retryBuf > 0 && head.ContentLength <= h.retryBuf {
		rq.buffered = r.body
	}
	r.tried = r.triedBuf[:0]
	c.State = stWait
	l.nextAttempt(c)
}

// nextAttempt starts the request's next attempt.
func (l *eloop) nextAttempt(c *lconn) {
	r := c.X.r
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
		c.Deadline = r.t1.Add(h.dialTimeout).UnixNano()
		return // sent once connected
	}
	uc.c, r.uc = c, uc
	l.send(c)
}

// send writes the request to the connected backend connection.
func (l *eloop) send(c *lconn) {
	r := c.X.r
	h := l.s.cfg.Handler
	uc := r.uc
	dl := r.t1.Add(h.respHeaderTimeout)
	if d := r.rq.deadline; !d.IsZero() && d.Before(dl) {
		dl = d
	}
	c.Deadline = dl.UnixNano()
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
		uc.pendh, uc.pend = evloop.GetOut()
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
	if err := l.lp.Register(fd, uc); err != nil {
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
	if uc.hup || !u.ready() || l.lp.Closing() || len(l.idle[u]) >= l.s.cfg.Handler.maxIdle {
		l.closeUp(uc)
		return
	}
	l.idle[u] = append(l.idle[u], uc)
	uc.idle = true
	u.loopIdle.Add(1)
}

func (l *eloop) releaseUpBuf(uc *uconn) {
	if uc.buf != nil {
		evloop.PutBuf(&upPool, uc.bufh, uc.buf)
		uc.bufh, uc.buf, uc.boff = nil, nil, 0
	}
	if uc.pend != nil {
		evloop.PutOut(uc.pendh, uc.pend)
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
	l.lp.Forget(uc.fd)
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
		if c.State == stResp {
			l.finishResp(c, err, nil)
		} else {
			l.upFailed(c, err)
		}
		return
	}
	switch c.State {
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
	r := c.X.r
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
	r := c.X.r
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
	r := c.X.r
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
			uc.bufh, uc.buf = evloop.GetBuf(&upPool)
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
	r := c.X.r
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
	c.State = stResp
	c.Deadline = 0
	if !rq.deadline.IsZero() {
		c.Deadline = rq.deadline.UnixNano()
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
	r := c.X.r
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
	r := c.X.r
	uc := r.uc
	for {
		if r.clErr != nil || c.WErr != nil {
			l.finishResp(c, nil, cmpOr(r.clErr, c.WErr))
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
		if !l.lp.FlushOut(c) {
			if c.WErr != nil {
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
	r := c.X.r
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
	if clErr != nil && c.WErr == nil {
		c.WErr = clErr
	}
	l.attemptDone(c, resDone, nil)
}

// attemptDone ends an attempt as the goroutine path's serve does: the
// answer is done, the client connection aborted, an error answered, or
// the request tried again.
func (l *eloop) attemptDone(c *lconn, res int, err error) {
	r := c.X.r
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

// responseDone ends a request whose answer was written (to c.Out or the
// socket), and goes on to the next.
func (l *eloop) responseDone(c *lconn) {
	r := c.X.r
	sc := r.sc
	if !sc.wrote {
		writeError(sc, http.StatusBadGateway, "proxy: bad gateway\n")
	}
	if sc.chunked {
		sc.writeLastChunk()
	}
	sc.bw.Flush()
	closeConn := sc.closeConn || l.lp.Closing() || l.s.g.Closing()
	c.Off += r.reqLen
	l.endReq(c)
	if c.WErr != nil {
		l.drop(c)
		return
	}
	if closeConn {
		l.lp.CloseAfterOut(c)
		return
	}
	c.State = stIdle
	c.Deadline = time.Now().Add(l.s.cfg.IdleTimeout).UnixNano()
	if c.Off == len(c.In) {
		l.lp.PutIn(c)
	}
	if l.lp.FlushOut(c) {
		l.process(c)
	} else if c.WErr != nil {
		l.drop(c)
	}
}

// Sweep closes backend connections idle for too long or to members that
// are not ready (evloop.Handler).
func (l *eloop) Sweep(now time.Time) {
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

// Expire ends what c was waiting for when its deadline passed
// (evloop.Handler).
func (l *eloop) Expire(c *lconn) {
	timeout := fmt.Errorf("proxy: %w", os.ErrDeadlineExceeded)
	switch c.State {
	case stWait:
		if uc := c.X.r.uc; uc != nil && uc.connecting {
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
