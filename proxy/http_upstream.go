package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/circuit"
)

// pconn is one persistent HTTP/1.1 connection to a backend with its
// parse state. It holds a buffered reader and writer only while a request
// uses it: idle connections give theirs back to the pools, so a few
// cache-warm buffers serve thousands of connections.
type pconn struct {
	conn    net.Conn
	io      *connIO
	br      *bufio.Reader
	bw      *bufio.Writer
	up      *upstream
	idleAt  time.Time
	reused  bool
	head    respHead
	scratch []byte
	// interrupt unblocks I/O on conn; built once per connection and
	// registered with context.AfterFunc for each request.
	interrupt func()
}

var (
	brPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}
	bwPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 8<<10) }}
)

func newPconn(c net.Conn, u *upstream) *pconn {
	pc := &pconn{conn: c, up: u, io: newConnIO(c)}
	pc.interrupt = func() { c.SetDeadline(aLongTimeAgo) }
	pc.attach()
	return pc
}

// attach gives pc a buffered reader and writer from the pools.
func (pc *pconn) attach() {
	pc.br = brPool.Get().(*bufio.Reader)
	pc.br.Reset(pc.io)
	pc.bw = bwPool.Get().(*bufio.Writer)
	pc.bw.Reset(pc.io)
}

// detach returns pc's buffers to the pools. It reports false, keeping
// them, when the reader holds bytes the backend sent beyond the response:
// such a connection must not be reused.
func (pc *pconn) detach() bool {
	if pc.br == nil {
		return true
	}
	if pc.br.Buffered() > 0 || pc.io.deferred != nil {
		return false
	}
	pc.br.Reset(nil)
	brPool.Put(pc.br)
	pc.bw.Reset(nil)
	bwPool.Put(pc.bw)
	pc.br, pc.bw = nil, nil
	return true
}

// close closes the connection and returns its buffers to their pools.
func (pc *pconn) close() {
	pc.conn.Close()
	pc.io.reset()
	if pc.br != nil {
		pc.br.Reset(nil)
		brPool.Put(pc.br)
		pc.bw.Reset(nil)
		bwPool.Put(pc.bw)
		pc.br, pc.bw = nil, nil
	}
}

// upstream is the proxy's state for one pool member: its idle
// connections and its share of the connection limit.
type upstream struct {
	ep    *balancer.Endpoint
	addr  netip.AddrPort
	token string           // sticky cookie value
	br    *circuit.Breaker // this member's circuit breaker; nil without HTTPConfig.Circuit

	mu      sync.Mutex
	idle    []*pconn    // LIFO: the most recently used on top
	retired atomic.Bool // no longer a pool member: close conns as they return

	loopIdle atomic.Int32 // idle connections kept by the server's event loops

	active int // connection-limit slots held; guarded by HTTP.lim.mu
}

// ready reports whether u may take new work.
func (u *upstream) ready() bool {
	return u.ep.Healthy() && !u.ep.Draining() && !u.retired.Load()
}

// getIdle returns an idle connection younger than idleTimeout, closing
// stale ones, or nil.
func (u *upstream) getIdle(now time.Time, idleTimeout time.Duration) *pconn {
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			return nil
		}
		pc := u.idle[n-1]
		u.idle[n-1] = nil
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		if now.Sub(pc.idleAt) < idleTimeout {
			pc.attach()
			return pc
		}
		pc.close()
	}
}

// put returns pc to the idle list, or closes it when u is retired or not
// ready or the list is full.
func (u *upstream) put(pc *pconn, maxIdle int, now time.Time) {
	if !u.ep.Healthy() || u.ep.Draining() || !pc.detach() {
		pc.close()
		return
	}
	pc.idleAt = now
	pc.reused = true
	u.mu.Lock()
	if u.retired.Load() || len(u.idle) >= maxIdle {
		u.mu.Unlock()
		pc.close()
		return
	}
	u.idle = append(u.idle, pc)
	u.mu.Unlock()
}

// closeIdle closes idle connections: all of them, or only those idle
// since before cutoff when cutoff is non-zero. It reports how many.
func (u *upstream) closeIdle(cutoff time.Time) int {
	u.mu.Lock()
	var victims []*pconn
	if cutoff.IsZero() {
		victims, u.idle = u.idle, nil
	} else {
		// The list is ordered by idleAt: the stale ones are at the bottom.
		i := 0
		for i < len(u.idle) && u.idle[i].idleAt.Before(cutoff) {
			i++
		}
		if i > 0 {
			victims = append(victims, u.idle[:i]...)
			u.idle = append(u.idle[:0], u.idle[i:]...)
			clear(u.idle[len(u.idle):cap(u.idle)])
		}
	}
	u.mu.Unlock()
	for _, pc := range victims {
		pc.close()
	}
	return len(victims)
}

// registry maps pool members to upstreams. It is immutable once
// published; changes copy it.
type registry struct {
	version uint64 // pool snapshot version it was built for
	byEP    map[*balancer.Endpoint]*upstream
	byToken map[string]*upstream
}

// upstreamFor returns the upstream of ep, creating it when ep is new.
func (h *HTTP) upstreamFor(ep *balancer.Endpoint) *upstream {
	if u := h.reg.Load().byEP[ep]; u != nil {
		return u
	}
	h.regMu.Lock()
	defer h.regMu.Unlock()
	old := h.reg.Load()
	if u := old.byEP[ep]; u != nil {
		return u
	}
	next := &registry{version: old.version, byEP: make(map[*balancer.Endpoint]*upstream, len(old.byEP)+1), byToken: make(map[string]*upstream, len(old.byToken)+1)}
	for k, v := range old.byEP {
		next.byEP[k] = v
	}
	for k, v := range old.byToken {
		next.byToken[k] = v
	}
	u := &upstream{ep: ep, addr: ep.Addr()}
	if h.cookies != nil {
		u.token = h.cookies.Token(u.addr)
		next.byToken[u.token] = u
	}
	next.byEP[ep] = u
	h.reg.Store(next)
	return u
}

// sync brings the registry in line with the pool's membership: members
// get an upstream, upstreams of former members are retired (their idle
// connections closed, the rest closed as they come back), and members
// that are not ready lose their idle connections. Called by the watcher
// on every snapshot change.
func (h *HTTP) sync() {
	snap := h.pool.Snapshot()
	members := h.pool.Endpoints()
	h.regMu.Lock()
	old := h.reg.Load()
	next := &registry{version: snap.Version, byEP: make(map[*balancer.Endpoint]*upstream, len(members)), byToken: make(map[string]*upstream, len(members))}
	for _, ep := range members {
		u := old.byEP[ep]
		if u == nil {
			u = &upstream{ep: ep, addr: ep.Addr()}
			if h.cookies != nil {
				u.token = h.cookies.Token(u.addr)
			}
			if h.cg != nil {
				u.br = h.cg.Member(u.addr)
			}
		}
		next.byEP[ep] = u
		if u.token != "" {
			next.byToken[u.token] = u
		}
	}
	h.reg.Store(next)
	h.regMu.Unlock()

	var gone []*upstream
	for ep, u := range old.byEP {
		if next.byEP[ep] == nil {
			gone = append(gone, u)
		}
	}
	for _, u := range gone {
		u.retired.Store(true)
		u.closeIdle(time.Time{})
		if h.cg != nil && !next.hasAddr(u.addr) {
			h.cg.Forget(u.addr)
		}
	}
	unready := len(gone) > 0
	for _, u := range next.byEP {
		if !u.ep.Healthy() || u.ep.Draining() {
			u.closeIdle(time.Time{})
			unready = true
		}
	}
	if unready && h.h2c != nil {
		// The transport cannot close one host's connections: close every
		// idle one; busy ones finish their streams.
		h.h2c.CloseIdleConnections()
	}
}

// hasAddr reports whether a member of r has address a.
func (r *registry) hasAddr(a netip.AddrPort) bool {
	for _, u := range r.byEP {
		if u.addr == a {
			return true
		}
	}
	return false
}

// watch keeps the registry in step with the pool and closes connections
// idle for longer than the idle timeout, until h is closed.
func (h *HTTP) watch() {
	defer close(h.done)
	tick := time.NewTicker(max(h.idleTimeout/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		snap := h.pool.Snapshot()
		select {
		case <-snap.Changed():
			h.sync()
		case now := <-tick.C:
			cutoff := now.Add(-h.idleTimeout)
			for _, u := range h.reg.Load().byEP {
				u.closeIdle(cutoff)
			}
		case <-h.stop:
			return
		}
	}
}

// dial opens a new connection to u, with TLS when configured.
func (h *HTTP) dial(ctx context.Context, u *upstream) (*pconn, error) {
	ctx, cancel := context.WithTimeout(ctx, h.dialTimeout)
	defer cancel()
	c, err := h.dialer.DialContext(ctx, "tcp", u.addr.String())
	if err != nil {
		return nil, err
	}
	if h.tls != nil {
		cfg := h.tls
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = u.addr.Addr().String()
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	return newPconn(c, u), nil
}

// Limiter errors.
var (
	// ErrQueueFull is the cause of a 503 when every candidate backend is
	// at MaxConns and MaxQueue requests are already waiting.
	ErrQueueFull = errors.New("proxy: backend queue full")
	// ErrQueueTimeout is the cause of a 503 when a queued request got no
	// connection slot within QueueTimeout.
	ErrQueueTimeout = errors.New("proxy: timed out in backend queue")
)

// limiter enforces MaxConns per upstream with one FIFO queue of waiting
// requests shared by all upstreams (HAProxy's maxconn and backend queue).
// A slot freed on an upstream goes to the oldest waiter that can use it:
// one pinned to that upstream (sticky) or one that takes any ready
// upstream it has not tried yet. A waiter is an entry of an intrusive
// doubly linked list with a one-slot channel: queueing allocates it and a
// timer, nothing else.
type limiter struct {
	max, maxQueue int
	mu            sync.Mutex
	head, tail    *waiter
	queued        int
}

type waiter struct {
	prev, next *waiter
	ch         chan *upstream // receives the upstream whose slot it got
	pin        *upstream      // only this one, or nil for any
	tried      []*upstream    // not these (a copy: the caller's stays on its stack)
	triedBuf   [4]*upstream
	queued     bool
}

// tryAcquire takes a slot on u without waiting.
func (l *limiter) tryAcquire(u *upstream) bool {
	if l.max <= 0 {
		return true
	}
	l.mu.Lock()
	ok := u.active < l.max
	if ok {
		u.active++
	}
	l.mu.Unlock()
	return ok
}

// wait queues until some upstream acceptable to the waiter frees a slot,
// ctx ends or timeout passes.
func (l *limiter) wait(ctx context.Context, pin *upstream, tried []*upstream, timeout time.Duration) (*upstream, error) {
	l.mu.Lock()
	if l.queued >= l.maxQueue {
		l.mu.Unlock()
		return nil, ErrQueueFull
	}
	w := &waiter{ch: make(chan *upstream, 1), pin: pin}
	w.tried = append(w.triedBuf[:0], tried...)
	l.push(w)
	l.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case u := <-w.ch:
		return u, nil
	case <-t.C:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	l.mu.Lock()
	if w.queued {
		l.remove(w)
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	// A slot was handed over while we gave up: use it.
	return <-w.ch, nil
}

func (l *limiter) push(w *waiter) {
	w.queued = true
	w.prev, w.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
	l.queued++
}

func (l *limiter) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	l.queued--
}

// release frees u's slot, handing it to the oldest waiter that can use
// it.
func (l *limiter) release(u *upstream) {
	if l.max <= 0 {
		return
	}
	ready := u.ready()
	l.mu.Lock()
	if ready {
		for w := l.head; w != nil; w = w.next {
			if (w.pin == nil || w.pin == u) && !contains(w.tried, u) {
				l.remove(w)
				l.mu.Unlock()
				w.ch <- u
				return
			}
		}
	}
	u.active--
	l.mu.Unlock()
}

func contains(s []*upstream, u *upstream) bool {
	for _, v := range s {
		if v == u {
			return true
		}
	}
	return false
}

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)
