//go:build linux

package dnslb

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSize is how many datagrams one recvmmsg/sendmmsg call moves.
const batchSize = 32

// batchReadBuf is the size of each receive buffer; a longer datagram is
// dropped (no real query comes close: 255-byte name, a few options).
const batchReadBuf = 4096

// udpBatch holds the buffers and message headers of one socket's batched
// read loop. Its headers point into its own arrays, which the Go heap
// does not move.
type udpBatch struct {
	in    [batchSize]unix.Mmsghdr
	iniov [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][]byte

	out    [batchSize]unix.Mmsghdr
	outiov [batchSize]unix.Iovec
	obufs  [batchSize][]byte
}

func newUDPBatch(maxUDP int) *udpBatch {
	b := new(udpBatch)
	for i := range batchSize {
		b.bufs[i] = make([]byte, batchReadBuf)
		b.obufs[i] = make([]byte, 0, maxUDP)
		b.iniov[i].Base = &b.bufs[i][0]
		b.iniov[i].SetLen(batchReadBuf)
		b.in[i].Hdr.Iov = &b.iniov[i]
		b.in[i].Hdr.Iovlen = 1
		b.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.out[i].Hdr.Iov = &b.outiov[i]
		b.out[i].Hdr.Iovlen = 1
	}
	return b
}

// sockaddrAddrPort converts a kernel socket address to an AddrPort.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	return netip.AddrPort{}
}

// serveUDPBatch is the Linux read loop: it takes every queued datagram
// (up to batchSize) with one recvmmsg, answers them, and sends the
// answers with one sendmmsg, waiting in the Go netpoller only when the
// socket is empty. It returns false if the socket cannot be used this way
// (the caller falls back to the portable loop).
func (s *Server) serveUDPBatch(uc *net.UDPConn, w *worker) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	b := newUDPBatch(s.maxUDP)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			for i := range batchSize {
				b.in[i].Hdr.Namelen = unix.SizeofSockaddrInet6
				b.in[i].Hdr.Flags = 0
				b.in[i].Len = 0
			}
			// MSG_DONTWAIT: the call never blocks, so it is made raw,
			// without the scheduler hand-off Syscall6 makes around a
			// call that might. Under load a sendmmsg of a full batch
			// on loopback runs long enough for sysmon to hand the P
			// to another thread, whose wake-up and spinning cost more
			// CPU than the call (about a third of dnslb's CPU per
			// query at dnsperf's defaults).
			r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case 0:
				n = int(r)
			case unix.EAGAIN:
				return false
			case unix.EINTR:
				n = 0
			default:
				rerr = e
			}
			return true
		})
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return true
			}
			s.log.Warn("dnslb: UDP read", "err", err)
			continue
		}
		if rerr != nil {
			if s.isClosed() {
				return true
			}
			s.log.Warn("dnslb: UDP recvmmsg", "err", rerr)
			continue
		}
		m := 0
		for i := range n {
			h := &b.in[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				w.stats.queries.Add(1)
				w.stats.dropped.Add(1)
				continue
			}
			src := sockaddrAddrPort(&b.names[i])
			resp := w.respond(b.bufs[i][:h.Len], src, false)
			if resp == nil {
				continue
			}
			b.obufs[m] = append(b.obufs[m][:0], resp[2:]...)
			o := &b.out[m]
			b.outiov[m].Base = &b.obufs[m][0]
			b.outiov[m].SetLen(len(b.obufs[m]))
			o.Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			o.Hdr.Namelen = h.Hdr.Namelen
			m++
		}
		for sent := 0; sent < m; {
			var werr error
			err := rc.Write(func(fd uintptr) bool {
				r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[sent])), uintptr(m-sent), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case 0:
					sent += int(r)
				case unix.EAGAIN:
					return false
				case unix.EINTR:
				default:
					werr = e
				}
				return true
			})
			if err != nil {
				return true // closed
			}
			if werr != nil {
				// The first unsent message failed (an unreachable
				// client): skip it, send the rest.
				s.log.Debug("dnslb: UDP sendmmsg", "err", werr)
				sent++
			}
		}
	}
}

// udpBufferBytes is the receive and send buffer Listen asks for on each
// UDP socket, so bursts wait in the kernel instead of being dropped.
const udpBufferBytes = 4 << 20

// growBuffers enlarges uc's socket buffers: with SO_RCVBUFFORCE and
// SO_SNDBUFFORCE when privileged (past net.core.rmem_max), else as far
// as the system allows. It is best effort.
func growBuffers(uc *net.UDPConn) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	var ferr error
	rc.Control(func(fd uintptr) {
		ferr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpBufferBytes),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, udpBufferBytes))
	})
	if ferr != nil {
		uc.SetReadBuffer(udpBufferBytes)
		uc.SetWriteBuffer(udpBufferBytes)
	}
}
