//go:build linux

package tcpproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/rawsys"
)

// The engine moves bytes between established client and backend TCP
// sockets on a few event loops, one per CPU, instead of two goroutines
// per connection: each loop waits in epoll for the sockets of its
// connections and splices what one sends into the other through a pipe
// taken from a shared free list only while bytes are in flight. An idle
// connection holds no goroutine, no buffer and no pipe: its state is a
// flow (a few hundred bytes) in its loop's table.
//
// Each socket joins its loop's epoll set once, edge-triggered, for
// readable and peer closed (and writable: a connecting backend, or a
// socket that once could not take a write, which is modified once for
// it; a writable socket added for writable is reported at once, a wasted
// wake per connection): a flow remembers what an edge told it instead of
// changing its registrations. Edge-triggered means an event comes when
// something changes, so a flow must not stop short of what the last edge
// promised:
//   - a source is read until it has nothing more for now: EAGAIN, or a
//     short read (TCP returns less than asked only when its receive queue
//     ran dry; bytes arriving later raise a new edge), unless the peer's
//     FIN was reported (EPOLLRDHUP), since the FIN behind the last bytes
//     raises no edge of its own: then a short read reached the FIN, and
//     is taken for EOF without a read that returns 0;
//   - a direction whose destination is full keeps its source "ready" and
//     goes on reading it once the destination's writable edge comes
//     (a write that failed with EAGAIN guarantees one);
//   - a direct flow's client socket joins once its backend connected
//     and its first bytes were read: a client has usually spoken by
//     then, and a socket read dry raises no event when added.
//
// The same short-read rule is HAProxy's; TCP urgent data (which stops a
// read at its mark) is not proxied by either.
//
// The sockets of connections that needed the net package stay
// *net.TCPConn; the loops use their descriptors, which stay valid
// because only the loop closes the connections (Close from elsewhere
// shuts the sockets down, which wakes the loop). The event loop was
// measured against the two-goroutine splice pipe on this work
// (benchmarks/tcpproxy_test.go): see the package's README rows.

// events is what every flow socket is registered for; some for
// EPOLLOUT too.
const events = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET

// pipeSize is what one splice moves at most, and the capacity pipes are
// given (as the net package does; a pipe whose size cannot be raised
// keeps its 64 KiB).
const pipeSize = 1 << 20

// bufSize is the size of a loop's read buffer, and of the read after
// which a direction switches to splice.
const bufSize = 16 << 10

// firstBufs hold the first read of connections being handed to a loop.
var firstBufs = sync.Pool{New: func() any { return new([bufSize]byte) }}

// maxFreePipes bounds the shared free list of pipes; more are closed.
const maxFreePipes = 256

// pipes is the free list of empty pipes, each [read end, write end].
var pipes struct {
	sync.Mutex
	free [][2]int
}

func getPipe() ([2]int, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return p, os.NewSyscallError("pipe2", err)
	}
	unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, pipeSize)
	return p, nil
}

// putPipe returns an empty pipe to the free list.
func putPipe(p [2]int) {
	pipes.Lock()
	if len(pipes.free) < maxFreePipes {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	closePipe(p)
}

func closePipe(p [2]int) {
	unix.Close(p[0])
	unix.Close(p[1])
}

// half is one direction of a flow: bytes read from one socket and
// written to the other.
type half struct {
	pipe    [2]int
	hasPipe bool
	n       int    // bytes in the pipe not yet written
	pend    []byte // read but not yet written (no pipe)
	stream  bool   // a read filled the buffer: splice from now on
	ready   bool   // the source may have bytes (or EOF) not read yet
	rdhup   bool   // the source's peer closed: read it until EOF
	fin     bool   // the source's FIN came (EPOLLRDHUP alone, no error)
	eof     bool   // the source sent FIN
	done    bool   // EOF passed on as a half-close
	wrote   bool   // something was written to the destination
	nodelay bool   // the destination has TCP_NODELAY
}

// heard records what an edge on the half's source reported.
func (h *half) heard(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		h.ready = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		h.rdhup = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLERR) == unix.EPOLLRDHUP {
		h.fin = true
	}
}

// writing is called before each write to the half's destination dst.
// Nagle's algorithm holds back a small segment only while an earlier
// one is unacknowledged, so the first write on a socket always leaves at
// once: TCP_NODELAY (which the net package sets on every socket) is set
// only before a second one. A connection that carries one request and
// one reply, the most common case, never needs it; a chatty one gets it
// before it could matter.
func (h *half) writing(dst int) {
	if h.wrote && !h.nodelay {
		rawsys.SetsockoptInt(dst, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		h.nodelay = true
	}
	h.wrote = true
}

// flow is a proxied connection owned by a loop: index 0 is the client
// side, 1 the backend side; half[0] copies client to backend.
type flow struct {
	l      *loop
	conns  [2]*net.TCPConn // nil for a direct flow, which owns fd
	fd     [2]int          // a direct flow's change under mu
	mu     sync.Mutex      // a direct flow's fd and closed, for shut
	closed bool
	dial   *dialing // a direct flow's, until connected

	ep      *balancer.Endpoint // a direct flow's backend
	slot    *atomic.Int64
	connect time.Duration
	half    [2]half
	out     [2]bool // socket i is registered for EPOLLOUT
	idle    time.Duration
	last    int64 // unix nanoseconds of the last byte moved (loop time)
	end     func(error)
	abort   atomic.Bool
}

// newFlow returns a flow over client and backend, or an error when their
// descriptors cannot be had. The net package set TCP_NODELAY on both.
func newFlow(client, backend *net.TCPConn, idle time.Duration, end func(error)) (*flow, error) {
	f := &flow{conns: [2]*net.TCPConn{client, backend}, idle: idle, end: end, last: time.Now().UnixNano()}
	for i, c := range f.conns {
		raw, err := c.SyscallConn()
		if err != nil {
			return nil, err
		}
		if err := raw.Control(func(fd uintptr) { f.fd[i] = int(fd) }); err != nil {
			return nil, err
		}
		f.half[i].nodelay = true
	}
	f.half[0].ready = true // the client has usually spoken: see firstPump
	return f, nil
}

// pump moves what direction d's source has to its destination until the
// source has nothing more for now, the destination is full, or EOF was
// passed on. Small reads go through buf (the loop's, shared by all its
// flows) with read and write, which for a few hundred bytes costs less
// than a pipe; once a read fills buf the direction carries a stream and
// switches to splice for good. Bytes the destination cannot take yet are
// kept: in the pipe, or copied out of buf. See the engine's comment for
// what an edge-triggered source needs.
func (f *flow) pump(d int, now int64, buf []byte) error {
	h := &f.half[d]
	src, dst := f.fd[d], f.fd[1-d]
	for !h.done {
		if h.n > 0 {
			h.writing(dst)
			m, err := rawsys.Splice(h.pipe[0], dst, h.n)
			if err == unix.EAGAIN {
				return f.blocked(1 - d) // dst's writable edge resumes
			}
			if err != nil {
				return fmt.Errorf("tcpproxy: splice: %w", os.NewSyscallError("splice", err))
			}
			if h.n -= m; h.n > 0 {
				continue
			}
			if !h.ready {
				putPipe(h.pipe)
				h.hasPipe = false
			}
		}
		if len(h.pend) > 0 {
			h.writing(dst)
			m, err := rawsys.Write(dst, h.pend)
			if err == unix.EAGAIN {
				return f.blocked(1 - d)
			}
			if err != nil {
				return fmt.Errorf("tcpproxy: %w", os.NewSyscallError("write", err))
			}
			if h.pend = h.pend[m:]; len(h.pend) > 0 {
				continue
			}
			h.pend = nil
		}
		if h.eof {
			h.done = true
			if h.hasPipe {
				putPipe(h.pipe)
				h.hasPipe = false
			}
			if f.half[1-d].done {
				return nil // both ways over: closing sends the FIN
			}
			if err := rawsys.Shutdown(dst, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
				return fmt.Errorf("tcpproxy: half-close: %w", os.NewSyscallError("shutdown", err))
			}
			return nil
		}
		if !h.ready {
			return nil // src's next edge resumes
		}
		if !h.stream {
			m, err := rawsys.Read(src, buf)
			if err == unix.EAGAIN {
				h.ready = false
				return nil
			}
			if err != nil {
				return fmt.Errorf("tcpproxy: %w", os.NewSyscallError("read", err))
			}
			if m == 0 {
				h.eof = true
				continue
			}
			f.last = now
			switch {
			case m == len(buf):
				h.stream = true
			case h.fin:
				// The FIN came before this read, behind every byte
				// sent (TCP queues it in order): a short read took
				// them all, and another would return 0. Only urgent
				// data stops a read short of what is there, and it is
				// not proxied.
				h.eof = true
			case !h.rdhup:
				h.ready = false // a short read drained the socket
			}
			h.writing(dst)
			w, err := rawsys.Write(dst, buf[:m])
			if err == unix.EAGAIN {
				w, err = 0, nil
			}
			if err != nil {
				return fmt.Errorf("tcpproxy: %w", os.NewSyscallError("write", err))
			}
			if w < m {
				h.pend = append([]byte(nil), buf[w:m]...)
			}
			continue
		}
		if !h.hasPipe {
			p, err := getPipe()
			if err != nil {
				return fmt.Errorf("tcpproxy: pipe: %w", err)
			}
			h.pipe, h.hasPipe = p, true
		}
		m, err := rawsys.Splice(src, h.pipe[1], pipeSize)
		if err == unix.EAGAIN {
			h.ready = false
			putPipe(h.pipe)
			h.hasPipe = false
			return nil
		}
		if err != nil {
			return fmt.Errorf("tcpproxy: splice: %w", os.NewSyscallError("splice", err))
		}
		if m == 0 {
			h.eof = true
			continue
		}
		h.n = m
		f.last = now
	}
	return nil
}

// blocked makes sure f's socket i, which could not take a write, is
// registered for EPOLLOUT, once: its writable edge is what resumes the
// direction writing to it. (A flow not yet handed to its loop is
// registered for it by add.)
func (f *flow) blocked(i int) error {
	if f.out[i] || f.l == nil {
		return nil
	}
	f.out[i] = true
	ev := unix.EpollEvent{Events: events | unix.EPOLLOUT, Fd: int32(f.fd[i])}
	if err := rawsys.EpollCtl(f.l.epfd, unix.EPOLL_CTL_MOD, f.fd[i], &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// pending reports whether h holds bytes its destination did not take yet.
func (h *half) pending() bool { return h.n > 0 || len(h.pend) > 0 }

// finished reports whether both directions passed EOF on.
func (f *flow) finished() bool { return f.half[0].done && f.half[1].done }

// release closes what the flow holds of the engine's: its pipes.
func (f *flow) release() {
	for i := range f.half {
		if h := &f.half[i]; h.hasPipe {
			if h.n == 0 {
				putPipe(h.pipe)
			} else {
				closePipe(h.pipe)
			}
			h.hasPipe = false
		}
	}
}

// shut wakes f's loop to end it: shutting the sockets down makes them
// report a hang-up. It runs on any goroutine; the descriptors cannot be
// closed under it, since Control holds them.
func (f *flow) shut() {
	f.abort.Store(true)
	if f.conns[0] == nil {
		f.mu.Lock()
		if !f.closed {
			for _, fd := range f.fd {
				if fd >= 0 {
					rawsys.Shutdown(fd, unix.SHUT_RDWR)
				}
			}
		}
		f.mu.Unlock()
		return
	}
	for _, c := range f.conns {
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { rawsys.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
	}
}

// loop is one event loop.
type loop struct {
	epfd, evfd int
	file       *os.File // epfd, for the runtime's poller
	buf        []byte   // for small reads, shared by the loop's flows

	mu    sync.Mutex
	flows map[int32]*flow // by socket descriptor, both sides
	lns   map[int32]*watched
	tick  time.Duration // how often idle flows are looked for; 0: never
	at    time.Time     // when they are next: the wait's deadline; zero: never
	n     atomic.Int32  // flows
	stop  bool
}

// engine is a server's set of loops, started with its first flow and
// stopped, for good, once the server stopped and its flows ended.
type engine struct {
	mu      sync.Mutex
	started bool
	err     error // why there are no loops
	loops   []*loop
	next    uint32
	wg      sync.WaitGroup
}

// loop returns a loop to add a flow to, starting the loops the first
// time, or an error when the engine cannot run (or was stopped).
func (e *engine) loop() (*loop, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		e.started = true
		for range runtime.GOMAXPROCS(0) {
			l, err := newLoop()
			if err != nil {
				e.err = err
				e.stopLocked()
				break
			}
			e.loops = append(e.loops, l)
			e.wg.Go(l.run)
		}
	}
	if e.err != nil {
		return nil, e.err
	}
	e.next++
	return e.loops[e.next%uint32(len(e.loops))], nil
}

// near returns the loop to serve a connection that loop lp accepted:
// lp itself, whose wake it was (every loop that was waiting is woken for
// a connection, and the first to accept it is the least busy), unless
// another loop has less than half as many flows. Handing every
// connection to the loops in turn wakes a second loop for each; keeping
// each on the loop that accepted it can put streams that start together
// on one CPU.
func (e *engine) near(lp *loop) (*loop, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return nil, e.err
	}
	least := lp
	for _, l := range e.loops {
		if l.n.Load() < least.n.Load() {
			least = l
		}
	}
	if lp.n.Load() > 2*least.n.Load() {
		return least, nil
	}
	return lp, nil
}

// all returns every loop, starting them if need be.
func (e *engine) all() ([]*loop, error) {
	if _, err := e.loop(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return nil, e.err
	}
	return e.loops, nil
}

// stop ends the loops (their flows must have ended) and waits for them.
func (e *engine) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	if e.err == nil {
		e.err = errAborted
	}
	e.stopLocked()
}

func (e *engine) stopLocked() {
	for _, l := range e.loops {
		l.mu.Lock()
		l.stop = true
		l.mu.Unlock()
		l.wake()
	}
	e.wg.Wait()
	e.loops = nil
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	file := os.NewFile(uintptr(epfd), "epoll") // nonblocking: the runtime polls it
	if err := file.SetReadDeadline(time.Time{}); err != nil {
		file.Close()
		return nil, fmt.Errorf("tcpproxy: epoll descriptor not pollable: %w", err)
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
	return &loop{epfd: epfd, file: file, evfd: evfd, flows: make(map[int32]*flow),
		lns: make(map[int32]*watched), buf: make([]byte, bufSize)}, nil
}

// close closes the loop's descriptors; run does when stopped.
func (l *loop) close() {
	l.file.Close() // the epoll descriptor
	unix.Close(l.evfd)
}

// wake interrupts the loop's wait.
func (l *loop) wake() {
	one := [8]byte{1}
	unix.Write(l.evfd, one[:])
}

// add registers f with the loop, which owns it from then on.
func (l *loop) add(f *flow) error {
	f.l = l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop {
		return errAborted
	}
	l.setTick(f.period())
	f.out[1] = f.half[0].pending() // what firstPump could not pass on
	for i := range f.fd {
		if err := l.watch(f, i); err != nil {
			if i == 1 {
				l.unwatch(f, 0)
			}
			return err
		}
	}
	l.n.Add(1)
	return nil
}

// watch adds f's socket i to the loop's epoll set, for good, and for
// EPOLLOUT when f.out[i]; l.mu is held. A socket that is ready already is
// reported at once.
func (l *loop) watch(f *flow, i int) error {
	fd := f.fd[i]
	l.flows[int32(fd)] = f
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if f.out[i] {
		ev.Events |= unix.EPOLLOUT
	}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		delete(l.flows, int32(fd))
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unwatch removes f's socket i from the loop's epoll set; l.mu is held.
// (Closing a socket removes it too.)
func (l *loop) unwatch(f *flow, i int) {
	delete(l.flows, int32(f.fd[i]))
	rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, f.fd[i], nil)
}

// run waits for events and serves them until stopped. The loop's epoll
// descriptor is itself waited for in the Go runtime's poller, so a loop
// with nothing to do parks like any goroutine blocked on a socket instead
// of holding a thread in epoll_wait; the epoll_wait calls here never
// block.
func (l *loop) run() {
	defer l.close()
	raw, err := l.file.SyscallConn()
	if err != nil {
		panic(fmt.Sprintf("tcpproxy: epoll descriptor: %v", err)) // checked by newLoop
	}
	events := make([]unix.EpollEvent, 128)
	batch := make([]*flow, 0, 128)
	var lnBatch []*watched
	for {
		l.mu.Lock()
		stop := l.stop
		l.mu.Unlock()
		if stop {
			return
		}
		var n int
		var werr error
		err := raw.Read(func(fd uintptr) bool {
			n, werr = rawsys.EpollPoll(int(fd), events)
			return n > 0 || werr != nil && werr != unix.EINTR
		})
		expired := errors.Is(err, os.ErrDeadlineExceeded) // time to sweep
		if err != nil && !expired || werr != nil && werr != unix.EINTR {
			panic(fmt.Sprintf("tcpproxy: epoll_wait: %v %v", err, werr)) // EBADF or EINVAL: a bug
		}
		now := time.Now()
		nowNS := now.UnixNano()
		batch = batch[:0]
		lnBatch = lnBatch[:0]
		l.mu.Lock()
		for _, ev := range events[:n] {
			batch = append(batch, l.flows[ev.Fd])
			if ln := l.lns[ev.Fd]; ln != nil {
				lnBatch = append(lnBatch, ln)
			}
		}
		l.mu.Unlock()
		for _, w := range lnBatch {
			w.ln.acceptFrom(l, w)
		}
		for i, ev := range events[:n] {
			if ev.Fd == int32(l.evfd) {
				var buf [8]byte
				unix.Read(l.evfd, buf[:])
				continue
			}
			if f := batch[i]; f != nil {
				l.serve(f, int(ev.Fd), ev.Events, nowNS)
			}
		}
		if expired {
			l.sweep(now)
		}
	}
}

// serve handles events ev on socket fd of f.
func (l *loop) serve(f *flow, fd int, ev uint32, now int64) {
	if f.l == nil {
		return // ended earlier in this batch
	}
	if f.abort.Load() {
		l.end(f, errAborted)
		return
	}
	i := 0
	if fd == f.fd[1] {
		i = 1
	}
	if f.dial != nil && !l.connecting(f, ev, now) {
		return
	}
	if ev&unix.EPOLLERR != 0 {
		err := unix.ECONNRESET
		if v, gerr := rawsys.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && v != 0 {
			err = syscall.Errno(v)
		}
		l.end(f, fmt.Errorf("tcpproxy: %w", os.NewSyscallError("read", err)))
		return
	}
	o := &f.half[1-i]
	h := &f.half[i]
	h.heard(ev)
	if h.ready {
		if err := f.pump(i, now, l.buf); err != nil {
			l.end(f, err)
			return
		}
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP) != 0 && o.pending() {
		if err := f.pump(1-i, now, l.buf); err != nil {
			l.end(f, err)
			return
		}
	}
	if f.finished() {
		l.end(f, nil)
	}
}

// sweep ends flows idle for their IdleTimeout, recomputes the tick and
// sets the next sweep.
func (l *loop) sweep(t time.Time) {
	now := t.UnixNano()
	var idle, late []*flow
	l.mu.Lock()
	tick := time.Duration(0)
	for fd, f := range l.flows {
		by := f.fd[0] // each flow once: by its client socket,
		if f.dial != nil {
			by = f.fd[1] // or its backend's while connecting (the client's joins later)
		}
		if int32(by) != fd {
			continue
		}
		switch {
		case f.dial != nil:
			if now >= f.dial.deadline {
				late = append(late, f)
				continue
			}
		case f.idle <= 0:
			continue // never idle
		case time.Duration(now-f.last) >= f.idle:
			idle = append(idle, f)
			continue
		}
		if t := f.period(); t > 0 && (tick == 0 || t < tick) {
			tick = t
		}
	}
	l.tick = tick
	l.at = time.Time{}
	if tick > 0 {
		l.at = t.Add(tick)
	}
	if !l.stop {
		l.file.SetReadDeadline(l.at)
	}
	l.mu.Unlock()
	for _, f := range idle {
		l.end(f, fmt.Errorf("tcpproxy: connection idle for %v: %w", f.idle, os.ErrDeadlineExceeded))
	}
	for _, f := range late {
		if f.l == nil || f.dial == nil {
			continue
		}
		l.retry(f, fmt.Errorf("tcpproxy: dial %v: %w", f.ep.Addr(), os.ErrDeadlineExceeded), now)
		if f.l != nil && f.dial != nil { // connecting again: keep looking
			l.mu.Lock()
			l.setTick(f.period())
			l.mu.Unlock()
		}
	}
}

// end removes f from the loop and ends it with err.
func (l *loop) end(f *flow, err error) {
	l.mu.Lock()
	delete(l.flows, int32(f.fd[0]))
	delete(l.flows, int32(f.fd[1]))
	l.mu.Unlock()
	l.n.Add(-1)
	f.l = nil
	f.release()
	f.end(err) // closes the sockets, which leaves the epoll set
}

// firstPump passes on what the client sent before the flow joins its
// loop (on the goroutine handing it over).
func (f *flow) firstPump() error {
	buf := firstBufs.Get().(*[bufSize]byte)
	defer firstBufs.Put(buf)
	return f.pump(0, time.Now().UnixNano(), buf[:])
}
