//go:build linux

package evloop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/rawsys"
)

// Sizes of the engine's batches and buffers.
const (
	engBatch = 256      // events taken per epoll_wait
	outSize  = 16 << 10 // a pooled buffer for bytes a client did not take
)

// Events are what every socket is registered for, once: reading,
// writing and the peer's FIN, edge-triggered.
const Events = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

var outPool = sync.Pool{New: func() any { b := make([]byte, 0, outSize); return &b }}

// GetBuf takes a buffer from pool: the handle to give it back with, and
// the buffer, empty.
func GetBuf(pool *sync.Pool) (*[]byte, []byte) {
	h := pool.Get().(*[]byte)
	return h, (*h)[:0]
}

// PutBuf gives b, taken with handle h, back to pool.
func PutBuf(pool *sync.Pool, h *[]byte, b []byte) {
	*h = b[:0]
	pool.Put(h)
}

// GetOut takes a buffer for bytes waiting to be written, of 16 KiB,
// from the pool that client connections' Out buffers come from.
func GetOut() (*[]byte, []byte) { return GetBuf(&outPool) }

// PutOut gives a buffer taken with GetOut back.
func PutOut(h *[]byte, b []byte) { PutBuf(&outPool, h, b) }

// Engine is a server's set of loops, started by its first listener
// ([Engine.Listener]) and stopped by [Engine.Stop]. Its zero value is
// ready to use; its methods are safe for concurrent use.
type Engine[X any] struct {
	cfg     Config[X]
	mu      sync.Mutex
	started bool
	err     error // why there are no loops
	loops   []*Loop[X]
	wg      sync.WaitGroup
	next    atomic.Uint32
	conns   atomic.Int64 // client connections on the loops
	closing atomic.Bool
	idle    chan struct{} // closed when conns drops to 0 while closing
	inPool  sync.Pool     // *[]byte In buffers of cfg.InSize
	lns     map[*Listener[X]]struct{}
}

// start starts the loops unless they run; it returns why they cannot.
func (e *Engine[X]) start(cfg Config[X]) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return e.err
	}
	e.started, e.cfg = true, cfg
	if e.cfg.Logger == nil {
		e.cfg.Logger = slog.Default()
	}
	e.cfg.Tick = min(max(e.cfg.Tick, 5*time.Millisecond), 250*time.Millisecond)
	for range runtime.GOMAXPROCS(0) {
		l, err := newLoop(e)
		if err != nil {
			e.err = err
			e.stopLocked()
			return err
		}
		l.first = len(e.loops) == 0
		l.h = cfg.NewHandler(l)
		e.loops = append(e.loops, l)
		e.wg.Go(l.run)
	}
	return nil
}

// pick returns the loop for a new connection: in turn.
func (e *Engine[X]) pick() *Loop[X] {
	return e.loops[e.next.Add(1)%uint32(len(e.loops))]
}

// Broadcast runs fn on every loop's goroutine.
func (e *Engine[X]) Broadcast(fn func(*Loop[X])) {
	e.mu.Lock()
	loops := e.loops
	e.mu.Unlock()
	for _, l := range loops {
		l.Submit(fn)
	}
}

// Conns returns the number of client connections on the loops.
func (e *Engine[X]) Conns() int64 { return e.conns.Load() }

// gone counts a client connection leaving the loops.
func (e *Engine[X]) gone() {
	if e.conns.Add(-1) == 0 && e.closing.Load() {
		e.mu.Lock()
		if e.idle != nil {
			close(e.idle)
			e.idle = nil
		}
		e.mu.Unlock()
	}
}

// drained returns a channel closed when the last connection is gone, or
// nil when there are no loops or no connection; it marks the engine
// closing.
func (e *Engine[X]) drained() chan struct{} {
	e.closing.Store(true)
	e.mu.Lock()
	if !e.started || e.err != nil {
		e.mu.Unlock()
		return nil
	}
	if e.idle == nil {
		e.idle = make(chan struct{})
	}
	idle := e.idle
	e.mu.Unlock()
	if e.conns.Load() == 0 {
		return nil
	}
	return idle
}

// Shutdown closes the connections the handlers call idle, lets the
// others finish their request (a loop that shuts down reports Closing)
// and waits for them until ctx ends, when it closes them. It reports
// whether it had to force.
func (e *Engine[X]) Shutdown(ctx context.Context) bool {
	idle := e.drained()
	if idle == nil {
		return false
	}
	e.Broadcast(func(l *Loop[X]) { l.closeIdle() })
	select {
	case <-idle:
		return false
	case <-ctx.Done():
		e.Kill()
		return true
	}
}

// Kill closes every connection now and waits until they are gone.
func (e *Engine[X]) Kill() {
	idle := e.drained()
	if idle == nil {
		return
	}
	e.Broadcast(func(l *Loop[X]) { l.killAll() })
	<-idle
}

// Stop ends the loops for good (their connections must be gone) and
// waits for them. Later listeners are refused.
func (e *Engine[X]) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	if e.err == nil {
		e.err = ErrClosed
	}
	e.stopLocked()
}

func (e *Engine[X]) stopLocked() {
	for _, l := range e.loops {
		l.submit(nil)
	}
	e.wg.Wait()
	e.loops = nil
}

// Loop is one event loop: an epoll set, an eventfd for the tasks other
// goroutines submit, and a table of what every descriptor belongs to.
// Methods other than Submit run on the loop's goroutine only (in the
// handler's methods or in submitted tasks).
type Loop[X any] struct {
	e    *Engine[X]
	h    Handler[X]
	epfd int
	evfd int
	file *os.File // epfd, waited for in the runtime's poller

	mu       sync.Mutex
	tab      []any      // by descriptor: *Conn, *Listener, or the handler's
	incoming []*Conn[X] // adopted by other loops, not yet listed
	tasks    []func(*Loop[X])
	stopping bool

	// Owned by the loop's goroutine.
	head    *Conn[X] // the loop's client connections, a doubly linked list
	closing bool     // the server is shutting down: no new requests
	first   bool     // the first loop, which checks the listeners
}

func newLoop[X any](e *Engine[X]) (*Loop[X], error) {
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
		return nil, fmt.Errorf("evloop: epoll descriptor not pollable: %w", err)
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
	return &Loop[X]{e: e, epfd: epfd, evfd: evfd, file: file}, nil
}

// Engine returns the engine the loop belongs to.
func (l *Loop[X]) Engine() *Engine[X] { return l.e }

// Closing reports whether the server is shutting down: a connection
// should close after the request it serves.
func (l *Loop[X]) Closing() bool { return l.closing }

// Submit runs fn on the loop's goroutine.
func (l *Loop[X]) Submit(fn func(*Loop[X])) {
	if fn != nil {
		l.submit(fn)
	}
}

// submit runs fn on the loop's goroutine; nil stops the loop.
func (l *Loop[X]) submit(fn func(*Loop[X])) {
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
func (l *Loop[X]) setTab(fd int, v any) {
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

// Register adds fd, owned by v, to the loop's epoll set for [Events]:
// its events go to the handler's Event with v. v must be a pointer.
func (l *Loop[X]) Register(fd int, v any) error {
	l.mu.Lock()
	l.setTab(fd, v)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: Events, Fd: int32(fd)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Lock()
		l.setTab(fd, nil)
		l.mu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// Forget drops fd from the table; closing fd leaves the epoll set.
func (l *Loop[X]) Forget(fd int) {
	l.mu.Lock()
	l.setTab(fd, nil)
	l.mu.Unlock()
}

// run waits for events and serves them until stopped. The epoll
// descriptor is itself waited for in the runtime's poller, so an idle
// loop parks like a goroutine blocked on a socket; the epoll_wait calls
// here never block.
func (l *Loop[X]) run() {
	defer unix.Close(l.evfd)
	defer l.file.Close()
	raw, err := l.file.SyscallConn()
	if err != nil {
		panic(fmt.Sprintf("evloop: epoll descriptor: %v", err)) // checked by newLoop
	}
	events := make([]unix.EpollEvent, engBatch)
	batch := make([]any, engBatch)
	tick := l.e.cfg.Tick
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
			panic(fmt.Sprintf("evloop: epoll_wait: %v %v", err, werr)) // EBADF or EINVAL: a bug
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
			if !c.Closed {
				l.list(c)
			}
		}
		clear(l.incoming)
		l.incoming = l.incoming[:0]
		l.mu.Unlock()
		for i, ev := range events[:n] {
			switch x := batch[i].(type) {
			case *Conn[X]:
				if !x.Closed {
					l.clientEvent(x, ev.Events)
				}
			case *Listener[X]:
				x.acceptFrom(l)
			case nil:
				if ev.Fd == int32(l.evfd) {
					var buf [8]byte
					unix.Read(l.evfd, buf[:])
					if l.runTasks() {
						return
					}
				}
			default:
				l.h.Event(x, ev.Events)
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
func (l *Loop[X]) runTasks() bool {
	l.mu.Lock()
	tasks, stop := l.tasks, l.stopping
	l.tasks = nil
	l.mu.Unlock()
	for _, fn := range tasks {
		fn(l)
	}
	if stop {
		l.h.Close()
	}
	return stop
}

// list adds c to the loop's list of client connections.
func (l *Loop[X]) list(c *Conn[X]) {
	c.next = l.head
	if l.head != nil {
		l.head.prev = c
	}
	l.head = c
}

func (l *Loop[X]) unlist(c *Conn[X]) {
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
func (l *Loop[X]) adopt(fd int, peer netip.AddrPort, ln *Listener[X]) {
	rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c := &Conn[X]{FD: fd, Peer: peer, ln: ln, Deadline: time.Now().Add(l.e.cfg.IdleTimeout).UnixNano()}
	c.W.c = c
	l.e.conns.Add(1)
	l.mu.Lock()
	l.setTab(fd, c)
	l.incoming = append(l.incoming, c)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: Events, Fd: int32(fd)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// The loop will list c; with no events it ends at its deadline.
		ln.log.Warn(ln.name+": epoll_ctl failed", "err", err)
	}
}

// Conn is a client connection on a loop: all an idle one holds (X is
// the handler's part). Its fields are the loop's, read and written on
// the loop's goroutine only.
type Conn[X any] struct {
	FD         int
	Peer       netip.AddrPort
	ln         *Listener[X]
	prev, next *Conn[X]
	In         []byte // the client's bytes; In[Off:] not yet used; nil when idle and empty
	inh        *[]byte
	Off        int
	Out        []byte // bytes the client did not take yet; nil when none
	outh       *[]byte
	W          Writer[X] // writes to the client
	Deadline   int64     // unix nanoseconds; 0: none
	WErr       error     // writing to the client failed
	State      uint8     // the handler's
	Closed     bool
	CanRead    bool // the socket may hold bytes: read before waiting
	CanWrite   bool
	Hup        bool // the client's FIN was reported: read until EOF
	EOF        bool // the client sent FIN and it was read
	closeAfter bool // close once Out is written
	X          X
}

// Writer writes to a client connection: straight to the socket while it
// takes bytes, the rest kept in the connection's Out (written by the
// loop when the socket has room, before the handler's Ready).
type Writer[X any] struct{ c *Conn[X] }

// Write writes p to the client, or keeps in c.Out what the socket does
// not take now; it fails once a write to the socket failed (c.WErr).
func (w *Writer[X]) Write(p []byte) (int, error) {
	c := w.c
	if c.WErr != nil {
		return 0, c.WErr
	}
	n := len(p)
	if len(c.Out) == 0 && c.CanWrite {
		m, err := rawsys.Write(c.FD, p)
		switch {
		case err == unix.EAGAIN:
			m = 0
			c.CanWrite = false
		case err != nil:
			c.WErr = fmt.Errorf("evloop: write to client: %w", os.NewSyscallError("write", err))
			return 0, c.WErr
		case m < len(p):
			c.CanWrite = false
		}
		p = p[m:]
	}
	if len(p) > 0 {
		if c.Out == nil {
			c.outh, c.Out = GetBuf(&outPool)
		}
		c.Out = append(c.Out, p...)
	}
	return n, nil
}

// FlushOut writes what the client did not take yet; it reports whether
// nothing is left. A failure is kept in c.WErr.
func (l *Loop[X]) FlushOut(c *Conn[X]) bool {
	for len(c.Out) > 0 {
		if !c.CanWrite || c.WErr != nil {
			return false
		}
		m, err := rawsys.Write(c.FD, c.Out)
		switch {
		case err == unix.EAGAIN:
			c.CanWrite = false
			return false
		case err != nil:
			c.WErr = fmt.Errorf("evloop: write to client: %w", os.NewSyscallError("write", err))
			return false
		}
		if m < len(c.Out) {
			c.CanWrite = false
			c.Out = c.Out[:copy(c.Out, c.Out[m:])]
			return false
		}
		c.Out = c.Out[:0]
	}
	if c.Out != nil {
		PutBuf(&outPool, c.outh, c.Out)
		c.outh, c.Out = nil, nil
	}
	return true
}

// clientEvent serves events ev on client connection c.
func (l *Loop[X]) clientEvent(c *Conn[X], ev uint32) {
	if ev&unix.EPOLLERR != 0 || ev&unix.EPOLLHUP != 0 {
		l.Drop(c) // reset, or shut down both ways: nobody to answer
		return
	}
	// Edge-triggered: remember every readiness reported, whatever is
	// done with it now.
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
		c.CanRead = true
		c.Hup = c.Hup || ev&unix.EPOLLRDHUP != 0
	}
	if ev&unix.EPOLLOUT != 0 {
		c.CanWrite = true
		if !l.FlushOut(c) {
			if c.WErr != nil {
				l.Drop(c)
			}
			return
		}
		if c.closeAfter {
			l.Drop(c)
			return
		}
	}
	if !c.closeAfter {
		l.h.Ready(c, ev&unix.EPOLLOUT != 0)
	}
}

// ReadIn reads what the client sent into c.In, taking a buffer of the
// engine's InSize if c has none. With compact, the bytes used (before
// c.Off) make room first. It reports whether anything changed (bytes,
// or the end of the client's stream, c.EOF); it drops c if reading
// fails (c.Closed).
func (l *Loop[X]) ReadIn(c *Conn[X], compact bool) bool {
	if !c.CanRead || c.EOF {
		return false
	}
	if c.In == nil {
		l.getIn(c)
	}
	if c.Off > 0 && compact {
		c.In = c.In[:copy(c.In, c.In[c.Off:])]
		c.Off = 0
	}
	free := cap(c.In) - len(c.In)
	if free == 0 {
		return false
	}
	n, err := rawsys.Read(c.FD, c.In[len(c.In):cap(c.In)])
	switch {
	case err == unix.EAGAIN:
		c.CanRead = false
		return false
	case err != nil:
		l.Drop(c)
		return false
	case n == 0:
		c.EOF, c.CanRead = true, false
		return true
	}
	if n < free && !c.Hup {
		c.CanRead = false // empty until the next event
	}
	c.In = c.In[:len(c.In)+n]
	return true
}

func (l *Loop[X]) getIn(c *Conn[X]) {
	if h, ok := l.e.inPool.Get().(*[]byte); ok {
		c.inh, c.In = h, (*h)[:0]
		return
	}
	b := make([]byte, 0, l.e.cfg.InSize)
	c.inh, c.In = &b, b
}

// PutIn gives c's In buffer back to the pool, with whatever it holds.
func (l *Loop[X]) PutIn(c *Conn[X]) {
	if c.In != nil {
		PutBuf(&l.e.inPool, c.inh, c.In)
		c.inh, c.In, c.Off = nil, nil, 0
	}
}

// CloseAfterOut closes c once what it holds for the client is written;
// until then its deadline is IdleTimeout from now.
func (l *Loop[X]) CloseAfterOut(c *Conn[X]) {
	c.closeAfter = true
	if l.FlushOut(c) || c.WErr != nil {
		l.Drop(c)
		return
	}
	c.Deadline = time.Now().Add(l.e.cfg.IdleTimeout).UnixNano()
}

// Drop closes a client connection now, after the handler's Release.
func (l *Loop[X]) Drop(c *Conn[X]) {
	if c.Closed {
		return
	}
	l.h.Release(c)
	l.release(c)
	rawsys.Close(c.FD)
	l.e.gone()
}

// release takes c off the loop and frees its buffers; the caller closes
// or hands over the descriptor.
func (l *Loop[X]) release(c *Conn[X]) {
	c.Closed = true
	l.Forget(c.FD)
	l.unlist(c)
	l.PutIn(c)
	if c.Out != nil {
		PutBuf(&outPool, c.outh, c.Out)
		c.outh, c.Out = nil, nil
	}
}

// Handoff gives c, with the bytes it read and did not use (In[Off:]), to
// the goroutine path: its listener's Accept returns it as a [PreConn].
// The handler's Release runs first.
func (l *Loop[X]) Handoff(c *Conn[X]) {
	if c.Closed {
		return
	}
	var pre []byte
	if c.In != nil {
		pre = bytes.Clone(c.In[c.Off:])
	}
	l.h.Release(c)
	l.release(c)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.FD, nil)
	f := os.NewFile(uintptr(c.FD), "")
	nc, err := net.FileConn(f) // a duplicate, in the runtime's poller
	f.Close()
	l.e.gone()
	if err != nil {
		c.ln.log.Warn(c.ln.name+": cannot hand a connection over", "err", err)
		return
	}
	c.ln.give(&PreConn{Conn: nc, Pre: pre})
}

// closeIdle closes the connections the handler calls idle (Shutdown);
// the others close after their answer.
func (l *Loop[X]) closeIdle() {
	l.closing = true
	for c := l.head; c != nil; {
		next := c.next
		if !c.closeAfter && l.h.Idle(c) {
			l.Drop(c)
		}
		c = next
	}
	l.h.Close()
}

// killAll closes every connection now (Close).
func (l *Loop[X]) killAll() {
	l.closing = true
	for c := l.head; c != nil; {
		next := c.next
		l.Drop(c)
		c = next
	}
	l.h.Close()
}

// sweep hands the handler what passed its deadline, then the sweep.
func (l *Loop[X]) sweep(now time.Time) {
	if l.first {
		l.e.checkListeners()
	}
	ns := now.UnixNano()
	for c := l.head; c != nil; {
		next := c.next
		if c.Deadline != 0 && ns >= c.Deadline {
			if c.closeAfter {
				l.Drop(c)
			} else {
				l.h.Expire(c)
			}
		}
		c = next
	}
	l.h.Sweep(now)
}

// Listener accepts connections on a loop (its socket is in that loop's
// epoll set), deals them to the loops in turn, and returns those handed
// over to the goroutine path from Accept.
type Listener[X any] struct {
	*net.TCPListener
	lraw  syscall.RawConn // the listener's, to see it closed by its owner
	e     *Engine[X]
	file  *os.File // a duplicate of the listener's descriptor, for the loops
	fd    int
	name  string
	log   *slog.Logger
	conns chan net.Conn
	done  chan struct{}

	mu     sync.RWMutex // held to accept, and to close
	closed bool
	err    error // a failure of accept4 that will not pass
	pause  atomic.Int64
}

// Listener starts the loops with cfg unless they run, and returns ln
// wrapped for them: the loops accept its connections, and its Accept
// returns those handed over (see [Loop.Handoff]). It returns nil when
// the loops cannot start or the engine was stopped.
func (e *Engine[X]) Listener(ln *net.TCPListener, cfg Config[X]) net.Listener {
	if err := e.start(cfg); err != nil {
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
	el := &Listener[X]{TCPListener: ln, lraw: lraw, e: e, file: os.NewFile(uintptr(dup), "listener"), fd: dup,
		name: e.cfg.Name, log: e.cfg.Logger, conns: make(chan net.Conn, 64), done: make(chan struct{})}
	e.mu.Lock()
	loops := e.loops
	if e.lns == nil {
		e.lns = make(map[*Listener[X]]struct{})
	}
	e.lns[el] = struct{}{}
	// One loop accepts and deals the connections out in turn. In every
	// loop's set, even EPOLLEXCLUSIVE would wake them all for each
	// connection (the loops wait through the runtime's poller, not in
	// epoll_wait), and all but one would find nothing to accept.
	l := loops[len(e.lns)%len(loops)]
	e.mu.Unlock()
	l.mu.Lock()
	l.setTab(dup, el)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(dup)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, dup, &ev); err != nil {
		el.Close()
		return nil
	}
	return el
}

// Accept returns the next connection handed over to the goroutine path.
func (el *Listener[X]) Accept() (net.Conn, error) {
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
func (el *Listener[X]) give(c net.Conn) {
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
func (el *Listener[X]) Close() error {
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
func (el *Listener[X]) fail(err error) {
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
func (e *Engine[X]) checkListeners() {
	e.mu.Lock()
	var gone []*Listener[X]
	for el := range e.lns {
		if el.lraw.Control(func(uintptr) {}) != nil {
			gone = append(gone, el)
			delete(e.lns, el)
		}
	}
	e.mu.Unlock()
	for _, el := range gone {
		el.fail(fmt.Errorf("%s: accept: %w", el.name, net.ErrClosed))
	}
}

// acceptFrom accepts what is waiting, on loop lp's goroutine, and gives
// the connections to the loops in turn.
func (el *Listener[X]) acceptFrom(lp *Loop[X]) {
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
			el.fail(fmt.Errorf("%s: accept: %w", el.name, os.NewSyscallError("accept4", err)))
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
// leaves lp's epoll set and joins again after a pause that doubles from
// 5ms to 1s while errors go on.
func (el *Listener[X]) failed(lp *Loop[X], err error) {
	pause := min(max(2*time.Duration(el.pause.Load()), 5*time.Millisecond), time.Second)
	el.pause.Store(int64(pause))
	el.log.Warn(el.name+": accept failed; retrying", "err", os.NewSyscallError("accept4", err), "in", pause)
	el.mu.RLock()
	defer el.mu.RUnlock()
	if el.closed || rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, el.fd, nil) != nil {
		return
	}
	time.AfterFunc(pause, func() {
		el.mu.RLock()
		defer el.mu.RUnlock()
		if !el.closed {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(el.fd)}
			rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, el.fd, &ev)
		}
	})
}
