//go:build linux

package tcpproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/rawsys"
)

// The direct path: when a connection needs nothing of the net package
// (no PROXY header from clients, no TLS, no routes), the server accepts
// it with accept4 and connects to the backend with a non-blocking
// connect that the event loop completes, so a connection costs no
// goroutine at all and none of the net package's bookkeeping calls
// (getsockname, getpeername, its own epoll registration and removal).
// Retries on other backends, connection limits, dial timeouts, passive
// health and PROXY headers to backends work as on the net path.

// dialing is a direct flow's state while it connects to a backend.
type dialing struct {
	s             *Server
	st            *settings
	info          balancer.PickInfo
	client, local netip.AddrPort
	triedBuf      [8]netip.AddrPort
	tried         []netip.AddrPort
	attempt       int
	lastErr       error
	start         int64 // unix nanoseconds the current attempt began
	deadline      int64 // and when it times out
}

// fastListener accepts connections for the direct path on the event
// loops (its socket is in every loop's epoll set), and queues those the
// current settings do not allow it for Accept, which serve.Group calls
// for the net path.
type fastListener struct {
	*net.TCPListener
	s     *Server
	file  *os.File // a duplicate of the listener's descriptor, for the loops
	fd    int
	local netip.AddrPort // unspecified: asked per connection that needs it
	loops []*loop
	log   *slog.Logger  // for accept errors: the one Serve started with
	conns chan net.Conn // accepted for the net path
	done  chan struct{} // closed by Close

	mu     sync.RWMutex // held to accept, and to close
	closed bool
	pause  atomic.Int64 // after an accept error that will pass, in ns
}

// fastListener returns ln wrapped for the direct path, or nil when the
// engine cannot run.
func (s *Server) fastListener(ln *net.TCPListener) net.Listener {
	loops, err := s.eng.all()
	if err != nil {
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
	fl := &fastListener{TCPListener: ln, s: s, file: os.NewFile(uintptr(dup), "listener"), fd: dup,
		local: addrPort(ln.Addr()), log: s.set.Load().log, conns: make(chan net.Conn, 64), done: make(chan struct{})}
	for _, l := range loops {
		if err := l.watchListener(fl); err != nil {
			fl.Close()
			return nil
		}
		fl.loops = append(fl.loops, l)
	}
	return fl
}

// Accept returns the next connection for the net path; the loops serve
// the others.
func (l *fastListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and closes the listener.
func (l *fastListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	for _, lp := range l.loops {
		lp.unwatchListener(l)
	}
	l.file.Close()
	err := l.TCPListener.Close()
	close(l.done)
	l.mu.Unlock()
	for {
		select {
		case c := <-l.conns:
			c.Close()
		default:
			return err
		}
	}
}

// watched is a listener in a loop's epoll set.
type watched struct {
	ln    *fastListener
	burst int // connections to accept per event, as learnt on this loop
}

// acceptFrom accepts what is waiting, on loop lp's goroutine: up to
// w.burst connections. The listener is level-triggered, so what is left
// is reported at the next poll; burst doubles (up to 64) when it was all
// taken and shrinks to what there was when accept4 found no more. A
// connection at a time, the usual case, then costs a failed accept4 on
// every other event rather than on every one.
func (l *fastListener) acceptFrom(lp *loop, w *watched) {
	w.burst = max(w.burst, 1)
	for i := range w.burst {
		l.mu.RLock()
		if l.closed {
			l.mu.RUnlock()
			return
		}
		nfd, client, err := rawsys.Accept(l.fd)
		l.mu.RUnlock()
		switch err {
		case nil:
		case unix.EAGAIN:
			w.burst = max(i, 1)
			return
		case unix.ECONNABORTED, unix.EINTR:
			continue
		default:
			l.failed(lp, err)
			return
		}
		if l.pause.Load() != 0 {
			l.pause.Store(0)
		}
		st := l.s.set.Load() // after accept: the settings the connection gets
		if st.fast() {
			to, err := l.s.eng.near(lp)
			if err != nil {
				rawsys.Close(nfd)
				continue
			}
			l.s.startDirect(to, st, nfd, client, l.local)
			continue
		}
		f := os.NewFile(uintptr(nfd), "")
		c, cerr := net.FileConn(f)
		f.Close()
		if cerr != nil {
			continue
		}
		select {
		case l.conns <- c:
		case <-l.done:
			c.Close()
		}
	}
	w.burst = min(2*w.burst, 64)
}

// failed pauses accepting on lp after err (out of descriptors or
// memory): the listener stays ready, so the loop would spin. It leaves
// lp's epoll set (an EPOLLEXCLUSIVE registration cannot be modified:
// EPOLL_CTL_MOD fails with EINVAL) and joins again after a pause that
// doubles from 5ms to 1s while errors go on.
func (l *fastListener) failed(lp *loop, err error) {
	pause := min(max(2*time.Duration(l.pause.Load()), 5*time.Millisecond), time.Second)
	l.pause.Store(int64(pause))
	l.log.Warn("tcpproxy: accept failed; retrying", "err", os.NewSyscallError("accept4", err), "in", pause)
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed || rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, l.fd, nil) != nil {
		return
	}
	time.AfterFunc(pause, func() {
		l.mu.RLock()
		defer l.mu.RUnlock()
		if !l.closed {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(l.fd)}
			rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, l.fd, &ev)
		}
	})
}

// watchListener adds ln's socket to the loop's epoll set.
func (l *loop) watchListener(ln *fastListener) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lns[int32(ln.fd)] = &watched{ln: ln}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ln.fd)}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev); err != nil {
		delete(l.lns, int32(ln.fd))
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unwatchListener removes ln's socket from the loop's epoll set.
func (l *loop) unwatchListener(ln *fastListener) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.lns[int32(ln.fd)]; w != nil && w.ln == ln {
		delete(l.lns, int32(ln.fd))
		rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
	}
}

// fast reports whether connections with these settings take the direct
// path.
func (st *settings) fast() bool {
	return !st.cfg.AcceptProxyProtocol && st.tls == nil && st.routes == nil
}

// startDirect starts a direct flow for the accepted socket cfd.
func (s *Server) startDirect(l *loop, st *settings, cfd int, client, local netip.AddrPort) {
	if st.cfg.Key.Source == balancer.KeyFlow {
		local = localAddr(cfd, local)
	}
	keepAliveOn(cfd, st)
	now := time.Now().UnixNano()
	f := &flow{fd: [2]int{cfd, -1}, idle: st.idle, last: now}
	d := &dialing{s: s, st: st, info: st.cfg.Key.Flow(balancer.TCP, client, local), client: client, local: local}
	d.tried = d.triedBuf[:0]
	f.dial = d
	f.end = func(err error) {
		f.closeFDs()
		if f.ep != nil {
			f.slot.Add(-1)
			f.ep.Done(nil, f.connect) // established, or stopped by the server while dialing
		}
		switch {
		case err == nil:
		case f.connect == 0:
			st.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
		default:
			st.log.Debug("tcpproxy: connection ended", "client", client, "backend", f.ep.Addr(), "err", err)
		}
		s.dropFlow(f)
	}
	if !s.addFlow(f) {
		rawsys.Close(cfd)
		return
	}
	if err := f.dialNext(now); err != nil {
		f.end(err)
		return
	}
	if err := l.addConnecting(f); err != nil {
		f.end(err)
	}
}

// localAddr returns the address the client connected to on socket fd:
// the listener's, unless that is unspecified (listening on every
// address), when the socket is asked (getsockname). Only a flow key and
// a PROXY header need it.
func localAddr(fd int, listener netip.AddrPort) netip.AddrPort {
	if a := listener.Addr(); !a.IsValid() || a.IsUnspecified() {
		if la, err := rawsys.LocalAddr(fd); err == nil {
			return la
		}
	}
	return listener
}

// keepAliveOn turns keep-alive probes on for a direct socket when they
// are configured. (TCP_NODELAY is set only when it matters: see
// half.writing.)
func keepAliveOn(fd int, st *settings) {
	if ka := st.cfg.KeepAlive; ka > 0 {
		secs := max(int(ka/time.Second), 1)
		rawsys.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
		rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
	}
}

// dialNext starts connecting to the next backend to try, as connect does
// on the net path: up to DialAttempts distinct ones, skipping those at
// their limit. It returns the last error when none is left.
func (f *flow) dialNext(now int64) error {
	d := f.dial
	if d.lastErr == nil {
		d.lastErr = ErrNoBackend
	}
	for d.attempt < d.st.attempts {
		d.attempt++
		ep := pickUntried(d.st.cfg.Pool, d.info, d.tried)
		if ep == nil {
			break
		}
		addr := ep.Addr()
		d.tried = append(d.tried, addr)
		slot := d.s.acquire(addr, d.st.limit)
		if slot == nil {
			d.lastErr = fmt.Errorf("%w: %v is at its connection limit", ErrNoBackend, addr)
			continue
		}
		ep.Start()
		fd, err := connectTo(addr, d.st)
		if err != nil {
			slot.Add(-1)
			d.lastErr = fmt.Errorf("tcpproxy: dial %v: %w", addr, err)
			ep.Done(d.lastErr, 0)
			continue
		}
		f.mu.Lock()
		f.fd[1] = fd
		f.mu.Unlock()
		f.ep, f.slot = ep, slot
		d.start, d.deadline = now, now+int64(d.st.dialer.Timeout)
		return nil
	}
	return d.lastErr
}

// connectTo opens a socket and starts connecting it to addr.
func connectTo(addr netip.AddrPort, st *settings) (int, error) {
	var zone uint32
	if z := addr.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			zone = uint32(ifi.Index)
		}
	}
	var sa rawsys.Sockaddr
	family, size := sa.Set(addr, zone)
	fd, err := rawsys.Socket(family)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	keepAliveOn(fd, st)
	if err := rawsys.Connect(fd, &sa, size); err != nil && err != unix.EINPROGRESS {
		rawsys.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// closeFDs closes a flow's sockets: a direct flow's descriptors, or a net
// path flow's connections (see flow.end).
func (f *flow) closeFDs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for i, fd := range f.fd {
		if fd >= 0 {
			rawsys.Close(fd)
			f.fd[i] = -1
		}
	}
}

// addConnecting registers a direct flow whose backend socket is
// connecting: the loop hears when it connected or failed.
func (l *loop) addConnecting(f *flow) error {
	f.l = l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop {
		return errAborted
	}
	if err := l.watchBackend(f); err != nil {
		return err
	}
	l.n.Add(1)
	return nil
}

// watchBackend registers f's connecting backend socket, for EPOLLOUT
// (connected) too; l.mu is held.
func (l *loop) watchBackend(f *flow) error {
	f.out[1] = true
	if err := l.watch(f, 1); err != nil {
		return err
	}
	l.setTick(f.period())
	return nil
}

// setTick makes the loop look for expired flows at least every t; l.mu is
// held. It moves the deadline of the loop's wait closer when need be,
// from any goroutine: no wake-up is needed for it.
func (l *loop) setTick(t time.Duration) {
	if t <= 0 || l.stop {
		return
	}
	if l.tick == 0 || t < l.tick {
		l.tick = t
	}
	if at := time.Now().Add(t); l.at.IsZero() || at.Before(l.at) {
		l.at = at
		l.file.SetReadDeadline(at)
	}
}

// period is how often f's timeouts need looking at: its dial timeout
// while connecting, its idle timeout once established.
func (f *flow) period() time.Duration {
	if f.dial != nil {
		return max(time.Duration(f.dial.st.dialer.Timeout)/4, time.Millisecond)
	}
	if f.idle > 0 {
		return f.idle / 2
	}
	return 0
}

// connecting serves an event on a direct flow's connecting backend. It
// reports whether the backend connected: then the client's first bytes
// were passed on, the client's socket joined the loop, and the caller
// serves the event as any other.
func (l *loop) connecting(f *flow, ev uint32, now int64) bool {
	var err error
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 || ev&unix.EPOLLOUT == 0 {
		// Failed; a clean writable event needs no asking.
		err = unix.ECONNREFUSED
		if v, gerr := rawsys.GetsockoptInt(f.fd[1], unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && v != 0 {
			err = syscall.Errno(v)
		}
	}
	if err != nil {
		l.retry(f, fmt.Errorf("tcpproxy: dial %v: %w", f.ep.Addr(), os.NewSyscallError("connect", err)), now)
		return false
	}
	d := f.dial
	f.dial = nil
	f.connect = max(time.Duration(now-d.start), 1)
	f.last = now
	if v := d.st.cfg.ProxyProtocol; v != 0 {
		var buf [256]byte
		b := headerFor(v, d.client, localAddr(f.fd[0], d.local)).Append(buf[:0])
		f.half[0].writing(f.fd[1])
		if n, err := rawsys.Write(f.fd[1], b); err != nil || n != len(b) {
			if err == nil {
				err = errors.New("short write")
			}
			l.end(f, fmt.Errorf("tcpproxy: write to %v: %w", f.ep.Addr(), err))
			return false
		}
	}
	// The client has usually spoken: pass that on at once, then watch
	// the client's socket (read dry, it raises no event when added).
	f.half[0].ready = true
	if err := f.pump(0, now, l.buf); err != nil {
		l.end(f, err)
		return false
	}
	l.mu.Lock()
	l.setTick(f.period())
	err = l.watch(f, 0)
	l.mu.Unlock()
	if err != nil {
		l.end(f, err)
		return false
	}
	return true
}

// retry reports a failed connect and tries the next backend, or ends the
// flow when none is left.
func (l *loop) retry(f *flow, err error, now int64) {
	f.ep.Done(err, 0)
	f.slot.Add(-1)
	f.ep, f.slot = nil, nil
	f.dial.lastErr = err
	old := f.fd[1]
	l.mu.Lock()
	delete(l.flows, int32(old))
	l.mu.Unlock()
	f.mu.Lock()
	rawsys.Close(old) // leaves the epoll set
	f.fd[1] = -1
	f.mu.Unlock()
	if f.abort.Load() {
		l.end(f, errAborted)
		return
	}
	if err := f.dialNext(now); err != nil {
		l.end(f, err)
		return
	}
	f.half[1] = half{} // nothing heard yet from the new socket
	l.mu.Lock()
	err = l.watchBackend(f)
	l.mu.Unlock()
	if err != nil {
		l.end(f, err)
	}
}
