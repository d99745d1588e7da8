package l2lb

import (
	"encoding/binary"
	"net/netip"
)

// Test frames, built byte by byte.

var (
	clientMAC   = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	balancerMAC = [6]byte{0x02, 0, 0, 0, 0, 0xb0}
)

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpPSH = 0x08
)

// frame builds an Ethernet frame from the client to the balancer carrying
// f (TCP with the given flags, or UDP) and payload.
func frame(f Flow, tcpFlags byte, payload []byte) []byte {
	var l4 []byte
	switch f.Proto {
	case TCP:
		l4 = make([]byte, 20, 20+len(payload))
		binary.BigEndian.PutUint16(l4[0:], f.Src.Port())
		binary.BigEndian.PutUint16(l4[2:], f.Dst.Port())
		binary.BigEndian.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 65535)
	default:
		l4 = make([]byte, 8, 8+len(payload))
		binary.BigEndian.PutUint16(l4[0:], f.Src.Port())
		binary.BigEndian.PutUint16(l4[2:], f.Dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	}
	l4 = append(l4, payload...)
	return ipFrame(f.Src.Addr(), f.Dst.Addr(), uint8(f.Proto), l4)
}

// ipFrame wraps an L4 payload in IPv4 or IPv6 and Ethernet.
func ipFrame(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, 14, 14+40+len(l4))
	copy(b[0:6], balancerMAC[:])
	copy(b[6:12], clientMAC[:])
	if src.Is4() {
		binary.BigEndian.PutUint16(b[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = 64
		ip[9] = proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		b = append(b, ip...)
	} else {
		binary.BigEndian.PutUint16(b[12:], 0x86dd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = proto
		ip[7] = 64
		s, d := src.As16(), dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		b = append(b, ip...)
	}
	return append(b, l4...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

var (
	vip4   = netip.MustParseAddrPort("198.18.0.100:80")
	vip6   = netip.MustParseAddrPort("[2001:db8::100]:80")
	vip4u  = netip.MustParseAddrPort("198.18.0.100:53")
	vip6u  = netip.MustParseAddrPort("[2001:db8::100]:53")
	client = netip.MustParseAddr("198.18.0.1")
	cli6   = netip.MustParseAddr("2001:db8::1")
)

func macOf(id uint32) [6]byte { return [6]byte{0x02, 0xbe, 0, 0, byte(id >> 8), byte(id)} }
