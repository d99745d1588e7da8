package h1

import (
	"net/netip"
	"strings"
	"unsafe"
)

// Trusted lists the peers (proxies) whose X-Forwarded-For is believed.
// The prefixes must be masked.
type Trusted []netip.Prefix

// Contains reports whether a is in one of t's prefixes.
func (t Trusted) Contains(a netip.Addr) bool {
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Client returns the client's address: the TCP peer, or, when the peer
// is trusted, the rightmost hop of the X-Forwarded-For lines xff that is
// not trusted. An unparsable hop stops the walk at the last trusted one.
// The zero Addr means unknown. It does not allocate.
func (t Trusted) Client(peer netip.Addr, xff []string) netip.Addr {
	if !peer.IsValid() || len(t) == 0 || !t.Contains(peer) {
		return peer
	}
	for i := len(xff) - 1; i >= 0; i-- {
		line := xff[i]
		for len(line) > 0 {
			var hop string
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				hop, line = line[j+1:], line[:j]
			} else {
				hop, line = line, ""
			}
			hop = strings.TrimSpace(hop)
			if hop == "" {
				continue
			}
			a := ParseHostAddr(hop)
			if !a.IsValid() {
				return peer
			}
			if !t.Contains(a) {
				return a
			}
			peer = a
		}
	}
	return peer
}

// ParseHostAddr parses "ip", "ip:port" or "[ip]:port" and returns the
// address unmapped, or the zero Addr. It does not allocate.
func ParseHostAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap()
	}
	return netip.Addr{}
}

// bytesOf views s as a byte slice without copying; the slice must not be
// modified.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
