package balancer

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// HashString returns the 64-bit xxHash of s, for use as [PickInfo.Key].
func HashString(s string) uint64 { return xxhash.Sum64String(s) }

// HashBytes returns the 64-bit xxHash of b, for use as [PickInfo.Key].
func HashBytes(b []byte) uint64 { return xxhash.Sum64(b) }

// HashAddr returns a 64-bit hash of an IP address. IPv4 and IPv4-mapped
// IPv6 forms of the same address hash alike. It does not allocate.
func HashAddr(a netip.Addr) uint64 {
	b := a.Unmap().As16()
	return xxhash.Sum64(b[:])
}

// HashAddrPort returns a 64-bit hash of an address and port. It does not
// allocate.
func HashAddrPort(ap netip.AddrPort) uint64 {
	var b [18]byte
	a := ap.Addr().Unmap().As16()
	copy(b[:16], a[:])
	binary.BigEndian.PutUint16(b[16:], ap.Port())
	return xxhash.Sum64(b[:])
}

// Proto is a transport protocol by its IP protocol number, as the kernel
// data planes (iplb, l2lb) and [HashFlow] use it.
type Proto uint8

// The transport protocols lbkit balances.
const (
	TCP Proto = 6
	UDP Proto = 17
)

// String returns "tcp", "udp" or "proto(N)".
func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	default:
		return "proto(" + strconv.Itoa(int(p)) + ")"
	}
}

// MarshalText returns "tcp" or "udp".
func (p Proto) MarshalText() ([]byte, error) {
	if p != TCP && p != UDP {
		return nil, errors.New("balancer: unknown protocol " + p.String())
	}
	return []byte(p.String()), nil
}

// UnmarshalText parses "tcp" or "udp".
func (p *Proto) UnmarshalText(b []byte) error {
	switch string(b) {
	case "tcp":
		*p = TCP
	case "udp":
		*p = UDP
	default:
		return errors.New("balancer: unknown protocol " + strconv.Quote(string(b)) + ": want tcp or udp")
	}
	return nil
}

// HashFlow returns a 64-bit hash of a flow's 5-tuple: protocol number
// (6 for TCP, 17 for UDP), source and destination. It does not allocate.
func HashFlow(proto uint8, src, dst netip.AddrPort) uint64 {
	var b [37]byte
	s := src.Addr().Unmap().As16()
	d := dst.Addr().Unmap().As16()
	copy(b[0:16], s[:])
	copy(b[16:32], d[:])
	binary.BigEndian.PutUint16(b[32:], src.Port())
	binary.BigEndian.PutUint16(b[34:], dst.Port())
	b[36] = proto
	return xxhash.Sum64(b[:])
}

// Mix64 is a fast bijective 64-bit mixer (splitmix64's finaliser). Policies
// use it to derive independent hashes from one key.
func Mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
