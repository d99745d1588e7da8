//go:build linux

package rawsys

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// Read reads into p; it never blocks on a non-blocking descriptor.
func Read(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Write writes p; it never blocks on a non-blocking descriptor.
func Write(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Splice moves up to n bytes from in to out, without blocking.
func Splice(in, out, n int) (int, error) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n),
		unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Shutdown shuts fd down for how (unix.SHUT_RD, SHUT_WR, SHUT_RDWR).
func Shutdown(fd, how int) error {
	_, _, e := syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

// Close closes fd.
func Close(fd int) error {
	_, _, e := syscall.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

// SetsockoptInt sets an integer socket option.
func SetsockoptInt(fd, level, opt, v int) error {
	val := int32(v)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), 4, 0)
	return errnoErr(e)
}

// GetsockoptInt reads an integer socket option.
func GetsockoptInt(fd, level, opt int) (int, error) {
	var val int32
	size := uint32(4)
	_, _, e := syscall.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), uintptr(unsafe.Pointer(&size)), 0)
	return int(val), errnoErr(e)
}

// SocketError returns the pending error of socket fd (SO_ERROR), or
// fallback when it has none or it cannot be read.
func SocketError(fd int, fallback error) error {
	if v, err := GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
		return syscall.Errno(v)
	}
	return fallback
}

// EpollCtl is epoll_ctl.
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd),
		uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

// EpollPoll returns the events ready now, without waiting.
func EpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Sockaddr is room for an IPv4 or IPv6 socket address.
type Sockaddr struct {
	b [unix.SizeofSockaddrInet6]byte
}

// Set fills s with a (zone is the IPv6 scope's interface index) and
// returns its family and length.
func (s *Sockaddr) Set(a netip.AddrPort, zone uint32) (family int, size uintptr) {
	ip := a.Addr().Unmap()
	*s = Sockaddr{}
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

// AddrPort reads the address in s, unmapping IPv4 in IPv6.
func (s *Sockaddr) AddrPort() netip.AddrPort {
	port := binary.BigEndian.Uint16(s.b[2:])
	switch binary.NativeEndian.Uint16(s.b[0:]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(s.b[4:8])), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(s.b[8:24])).Unmap(), port)
	}
	return netip.AddrPort{}
}

// Accept accepts a connection on the listening socket fd, non-blocking
// and close-on-exec, and returns it with the client's address.
func Accept(fd int) (int, netip.AddrPort, error) {
	var sa Sockaddr
	size := uint32(len(sa.b))
	n, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])),
		uintptr(unsafe.Pointer(&size)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(n), sa.AddrPort(), nil
}

// LocalAddr is getsockname.
func LocalAddr(fd int) (netip.AddrPort, error) {
	var sa Sockaddr
	size := uint32(len(sa.b))
	_, _, e := syscall.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])),
		uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return netip.AddrPort{}, e
	}
	return sa.AddrPort(), nil
}

// Socket opens a non-blocking, close-on-exec TCP socket of family.
func Socket(family int) (int, error) {
	fd, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// Connect starts connecting fd to sa.
func Connect(fd int, sa *Sockaddr, size uintptr) error {
	_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa.b[0])), size)
	return errnoErr(e)
}

// Dial opens a non-blocking TCP socket and starts connecting it to addr:
// the connection is made once the socket turns writable. An IPv6 zone is
// looked up as an interface name.
func Dial(addr netip.AddrPort) (int, error) {
	var zone uint32
	if z := addr.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			zone = uint32(ifi.Index)
		}
	}
	var sa Sockaddr
	family, size := sa.Set(addr, zone)
	fd, err := Socket(family)
	if err != nil {
		return -1, err
	}
	if err := Connect(fd, &sa, size); err != nil && err != unix.EINPROGRESS {
		Close(fd)
		return -1, err
	}
	return fd, nil
}
