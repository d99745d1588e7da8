//go:build linux

package tcpproxy

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loops' system calls, made raw: on non-blocking sockets,
// pipes and an epoll set none of them can block, so they skip the
// runtime's syscall bookkeeping. Measured on this work, that bookkeeping
// (a processor handed off when a loopback connect or close ran past the
// scheduler's 20 µs tick, and the threads woken to take it over) cost
// more than the calls themselves.

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func sysRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sysWrite(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// sysSplice moves up to n bytes from in to out, without blocking.
func sysSplice(in, out, n int) (int, error) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n),
		unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func sysShutdown(fd, how int) error {
	_, _, e := syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

func sysClose(fd int) error {
	_, _, e := syscall.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

func sysSetsockoptInt(fd, level, opt, v int) error {
	val := int32(v)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), 4, 0)
	return errnoErr(e)
}

func sysGetsockoptInt(fd, level, opt int) (int, error) {
	var val int32
	size := uint32(4)
	_, _, e := syscall.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), uintptr(unsafe.Pointer(&size)), 0)
	return int(val), errnoErr(e)
}

func sysEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd),
		uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

// sysEpollPoll returns the events ready now, without waiting.
func sysEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSockaddr is room for an IPv4 or IPv6 socket address.
type rawSockaddr struct {
	b [unix.SizeofSockaddrInet6]byte
}

// set fills s with a and returns its family and length.
func (s *rawSockaddr) set(a netip.AddrPort, zone uint32) (family int, size uintptr) {
	ip := a.Addr().Unmap()
	*s = rawSockaddr{}
	binary.BigEndian.PutUint16(s.b[2:], a.Port())
	if ip.Is4() {
		binary.NativeEndian.PutUint16(s.b[0:], unix.AF_INET)
		v := ip.As4()
		copy(s.b[4:8], v[:])
		return unix.AF_INET, unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(s.b[0:], unix.AF_INET6)
	v := ip.As16()
	copy(s.b[8:24], v[:])
	binary.NativeEndian.PutUint32(s.b[24:], zone)
	return unix.AF_INET6, unix.SizeofSockaddrInet6
}

// addrPort reads the address in s, unmapping IPv4 in IPv6.
func (s *rawSockaddr) addrPort() netip.AddrPort {
	port := binary.BigEndian.Uint16(s.b[2:])
	switch binary.NativeEndian.Uint16(s.b[0:]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(s.b[4:8])), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(s.b[8:24])).Unmap(), port)
	}
	return netip.AddrPort{}
}

// sysAccept accepts a connection on the listening socket fd, non-blocking
// and close-on-exec, and returns it with the client's address.
func sysAccept(fd int) (int, netip.AddrPort, error) {
	var sa rawSockaddr
	size := uint32(len(sa.b))
	n, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])),
		uintptr(unsafe.Pointer(&size)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(n), sa.addrPort(), nil
}

// sysLocalAddr is getsockname.
func sysLocalAddr(fd int) (netip.AddrPort, error) {
	var sa rawSockaddr
	size := uint32(len(sa.b))
	_, _, e := syscall.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])),
		uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return netip.AddrPort{}, e
	}
	return sa.addrPort(), nil
}

// sysSocket opens a non-blocking, close-on-exec TCP socket of family.
func sysSocket(family int) (int, error) {
	fd, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// sysConnect starts connecting fd to sa.
func sysConnect(fd int, sa *rawSockaddr, size uintptr) error {
	_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])), size)
	return errnoErr(e)
}
