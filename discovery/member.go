package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/lbkit/lbkit/balancer"
)

// Member is one member as a user writes it: in Go, in a members file, in
// lbkit serve's configuration. Its address may name a host, which a
// source resolves to one backend per address.
type Member struct {
	// Addr is "IP:port" ("198.18.0.11:8080", "[2001:db8::1]:80") or
	// "host:port" ("localhost:9101", "web-1.example.test:80"). The port
	// is a number. Required.
	Addr string `json:"addr" yaml:"addr"`
	// Weight is the member's relative share of new work. Zero means 1.
	Weight uint32 `json:"weight,omitempty" yaml:"weight,omitempty"`
	// Zone names the member's location (see balancer.Backend.Zone).
	Zone string `json:"zone,omitempty" yaml:"zone,omitempty"`
	// Meta is data a front-end reads from the member (see
	// balancer.Backend.Meta).
	Meta map[string]string `json:"meta,omitempty" yaml:"meta,omitempty"`
}

// target is a parsed Member: an IP or a host name to resolve, and a port.
type target struct {
	m Member
	Addr
}

// Addr is a member address split into its parts: an IP address or a host
// name to resolve, and a port.
type Addr struct {
	// IP is the address when the member names an IP; invalid otherwise.
	IP netip.Addr
	// Host is the host name to resolve, without a final dot; empty when
	// IP is set.
	Host string
	// Port is the port, 1 to 65535.
	Port uint16
}

// AddrError is a member address that does not parse. Reason says what is
// wrong and what was expected, without the address, for a configuration
// loader that names the address its own way.
type AddrError struct {
	Addr   string
	Reason string
}

// Error returns "discovery: member ADDR: REASON".
func (e *AddrError) Error() string {
	return fmt.Sprintf("discovery: member %q: %s", e.Addr, e.Reason)
}

// ParseAddr parses a member address, "IP:port" or "host:port": the port
// is a number from 1 to 65535, the host an IP address or a DNS host name
// (dot-separated labels of letters, digits, '-' and '_', not starting or
// ending with '-', 253 bytes at most, an optional final dot; a name of
// digits and dots alone is refused, as a mistyped IP). It is the one
// parser of member addresses: the sources of this package and lbkit's
// configuration loader use it. Errors are *AddrError.
func ParseAddr(s string) (Addr, error) {
	fail := func(format string, args ...any) (Addr, error) {
		return Addr{}, &AddrError{Addr: s, Reason: fmt.Sprintf(format, args...)}
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fail("expected IP:port or host:port, such as 198.18.0.11:8080")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		if _, numErr := strconv.ParseUint(port, 10, 64); numErr == nil {
			return fail("port %s: expected 1 to 65535", port)
		}
		return fail("port %q: expected 1 to 65535", port)
	}
	a := Addr{Port: uint16(p)}
	if ip, err := netip.ParseAddr(host); err == nil {
		a.IP = ip.Unmap()
		return a, nil
	}
	if !validHost(host) {
		return fail("host %q: expected an IP address or a DNS name", host)
	}
	if strings.Trim(host, "0123456789.") == "" {
		return fail("host %q: not an IP address", host)
	}
	a.Host = strings.TrimSuffix(host, ".")
	return a, nil
}

// parseMember checks m and splits its address.
func parseMember(m Member) (target, error) {
	a, err := ParseAddr(m.Addr)
	if err != nil {
		return target{}, err
	}
	return target{m: m, Addr: a}, nil
}

// validHost reports whether s can be a DNS host name: dot-separated
// labels of 1-63 letters, digits, hyphens and underscores, not starting
// or ending with a hyphen, 253 bytes at most, an optional final dot.
func validHost(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// parseMembers parses every member; addrs says where each came from in
// errors.
func parseMembers(ms []Member) ([]target, error) {
	ts := make([]target, 0, len(ms))
	for _, m := range ms {
		t, err := parseMember(m)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// backend makes the backend of t at ip.
func (t target) backend(ip netip.Addr) balancer.Backend {
	return balancer.Backend{Addr: netip.AddrPortFrom(ip, t.Port), Weight: t.m.Weight, Zone: t.m.Zone, Meta: t.m.Meta}
}

// hostResolver resolves the host names of members and remembers the last
// addresses of each, so a name that stops resolving keeps its members.
// It is used by one goroutine at a time.
type hostResolver struct {
	resolver *net.Resolver
	network  string // "ip", "ip4" or "ip6"
	last     map[string][]netip.Addr
}

// checkNetwork checks a Network field.
func checkNetwork(n string) (string, error) {
	switch n {
	case "":
		return "ip", nil
	case "ip", "ip4", "ip6":
		return n, nil
	}
	return "", fmt.Errorf("discovery: network %q: want ip, ip4 or ip6", n)
}

// hasHosts reports whether any target names a host.
func hasHosts(ts []target) bool {
	return slices.ContainsFunc(ts, func(t target) bool { return t.Host != "" })
}

// backends returns the backends of ts in order, one per address of each
// host name, duplicates removed. A host name that does not resolve keeps
// the addresses it last had (none if it never resolved), and its error
// is returned beside the backends.
func (h *hostResolver) backends(ctx context.Context, ts []target) ([]balancer.Backend, error) {
	var errs []error
	resolved := make(map[string][]netip.Addr)
	out := make([]balancer.Backend, 0, len(ts))
	seen := make(map[netip.AddrPort]struct{}, len(ts))
	add := func(b balancer.Backend) {
		if _, dup := seen[b.Addr]; !dup {
			seen[b.Addr] = struct{}{}
			out = append(out, b)
		}
	}
	for _, t := range ts {
		if t.Host == "" {
			add(t.backend(t.IP))
			continue
		}
		ips, ok := resolved[t.Host]
		if !ok {
			var err error
			ips, err = h.lookup(ctx, t.Host)
			if err != nil {
				errs = append(errs, err)
				ips = h.last[t.Host]
			}
			resolved[t.Host] = ips
		}
		for _, ip := range ips {
			add(t.backend(ip))
		}
	}
	h.last = make(map[string][]netip.Addr, len(resolved))
	for host, ips := range resolved {
		if len(ips) > 0 {
			h.last[host] = ips
		}
	}
	return out, errors.Join(errs...)
}

// lookup returns the sorted addresses of host.
func (h *hostResolver) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	r := h.resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, h.network, host)
	if err != nil {
		return nil, fmt.Errorf("discovery: resolve %q: %w", host, err)
	}
	for i, ip := range ips {
		ips[i] = ip.Unmap()
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	ips = slices.Compact(ips)
	if len(ips) == 0 {
		return nil, fmt.Errorf("discovery: resolve %q: no %s address", host, h.network)
	}
	return ips, nil
}
