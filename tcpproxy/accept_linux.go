//go:build linux

package tcpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/balancer"
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

// fastListener accepts connections for the direct path, and hands those
// the current settings do not allow it to the net path.
type fastListener struct {
	*net.TCPListener
	s     *Server
	file  *os.File // a duplicate of the listener's descriptor, polled by the runtime
	raw   syscall.RawConn
	local netip.AddrPort // unspecified: asked per connection
}

// fastListener returns ln wrapped for the direct path, or nil when the
// engine cannot run.
func (s *Server) fastListener(ln *net.TCPListener) net.Listener {
	if _, err := s.eng.loop(); err != nil {
		return nil
	}
	// A listener's own RawConn cannot wait to read: wait on a duplicate.
	lraw, err := ln.SyscallConn()
	if err != nil {
		return nil
	}
	dup := -1
	if err := lraw.Control(func(fd uintptr) { dup, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dup < 0 {
		return nil
	}
	file := os.NewFile(uintptr(dup), "listener") // nonblocking, as the listener
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil
	}
	return &fastListener{TCPListener: ln, s: s, file: file, raw: raw, local: addrPort(ln.Addr())}
}

// Close closes the listener and its duplicate.
func (l *fastListener) Close() error {
	l.file.Close()
	return l.TCPListener.Close()
}

// Accept serves direct connections itself and returns the others.
func (l *fastListener) Accept() (net.Conn, error) {
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		err := l.raw.Read(func(fd uintptr) bool {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN
		})
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				err = net.ErrClosed
			}
			return nil, err
		}
		switch aerr {
		case nil:
		case unix.ECONNABORTED, unix.EINTR:
			continue
		default:
			return nil, os.NewSyscallError("accept4", aerr)
		}
		st := l.s.set.Load() // after accept: the settings the connection gets
		if st.fast() {
			l.s.startDirect(st, nfd, sa, l.local)
			continue
		}
		f := os.NewFile(uintptr(nfd), "")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// fast reports whether connections with these settings take the direct
// path.
func (st *settings) fast() bool {
	return !st.cfg.AcceptProxyProtocol && st.tls == nil && st.routes == nil
}

// startDirect starts a direct flow for the accepted socket cfd.
func (s *Server) startDirect(st *settings, cfd int, sa unix.Sockaddr, local netip.AddrPort) {
	client := sockaddrAddrPort(sa)
	if a := local.Addr(); !a.IsValid() || a.IsUnspecified() {
		if lsa, err := unix.Getsockname(cfd); err == nil {
			local = sockaddrAddrPort(lsa)
		}
	}
	tune(cfd, st)
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
	l, err := s.eng.loop()
	if err != nil || !s.addFlow(f) {
		unix.Close(cfd)
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

// tune sets a direct socket's options: no Nagle delay (as the net
// package does), keep-alive probes when configured.
func tune(fd int, st *settings) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if ka := st.cfg.KeepAlive; ka > 0 {
		secs := max(int(ka/time.Second), 1)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
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
	a := addr.Addr().Unmap()
	family := unix.AF_INET6
	var sa unix.Sockaddr
	if a.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		s6 := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				s6.ZoneId = uint32(ifi.Index)
			}
		}
		sa = s6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	tune(fd, st)
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// sockaddrAddrPort converts a socket address, unmapping IPv4 in IPv6.
func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// closeFDs closes a flow's sockets: a direct flow's descriptors, or a net
// path flow's connections (see flow.end).
func (f *flow) closeFDs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for i, fd := range f.fd {
		if fd >= 0 {
			unix.Close(fd)
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
	return l.watchBackend(f)
}

// watchBackend registers f's connecting backend socket; l.mu is held.
func (l *loop) watchBackend(f *flow) error {
	l.flows[int32(f.fd[1])] = f
	f.reg[1] = unix.EPOLLOUT
	ev := unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(f.fd[1])}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, f.fd[1], &ev); err != nil {
		delete(l.flows, int32(f.fd[1]))
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.setTick(f.period())
	return nil
}

// setTick makes the loop look for expired flows at least every t; l.mu is
// held.
func (l *loop) setTick(t time.Duration) {
	if t > 0 && (l.tick == 0 || t < l.tick) {
		l.tick = t
		l.wake()
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

// connecting serves an event on a direct flow's connecting backend.
func (l *loop) connecting(f *flow, ev uint32, now int64) {
	v, err := unix.GetsockoptInt(f.fd[1], unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && v != 0 {
		err = syscall.Errno(v)
	}
	if err == nil && ev&unix.EPOLLOUT == 0 {
		err = unix.ECONNREFUSED
	}
	if err != nil {
		l.retry(f, fmt.Errorf("tcpproxy: dial %v: %w", f.ep.Addr(), os.NewSyscallError("connect", err)), now)
		return
	}
	d := f.dial
	f.dial = nil
	f.connect = max(time.Duration(now-d.start), 1)
	f.last = now
	if v := d.st.cfg.ProxyProtocol; v != 0 {
		var buf [256]byte
		b := headerFor(v, d.client, d.local).Append(buf[:0])
		if n, err := unix.Write(f.fd[1], b); err != nil || n != len(b) {
			if err == nil {
				err = errors.New("short write")
			}
			l.end(f, fmt.Errorf("tcpproxy: write to %v: %w", f.ep.Addr(), err))
			return
		}
	}
	// The client has usually spoken: pass that on at once.
	if err := f.pump(0, now, l.buf); err != nil {
		l.end(f, err)
		return
	}
	l.mu.Lock()
	l.flows[int32(f.fd[0])] = f
	l.setTick(f.period())
	l.mu.Unlock()
	f.reg[0] = f.want(0)
	e := unix.EpollEvent{Events: f.reg[0], Fd: int32(f.fd[0])}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, f.fd[0], &e); err != nil {
		l.end(f, os.NewSyscallError("epoll_ctl", err))
		return
	}
	l.register(f)
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
	unix.Close(old) // leaves the epoll set
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
	l.mu.Lock()
	err = l.watchBackend(f)
	l.mu.Unlock()
	if err != nil {
		l.end(f, err)
	}
}
