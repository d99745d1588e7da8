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
	m    Member
	host string     // a host name to resolve; empty when ip is set
	ip   netip.Addr // the member's IP when Addr is a literal
	port uint16
}

// parseMember checks m and splits its address.
func parseMember(m Member) (target, error) {
	host, port, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return target{}, fmt.Errorf("discovery: member %q: %w", m.Addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return target{}, fmt.Errorf("discovery: member %q: port %q is not a number in 1-65535", m.Addr, port)
	}
	t := target{m: m, port: uint16(p)}
	if ip, err := netip.ParseAddr(host); err == nil {
		t.ip = ip.Unmap()
		return t, nil
	}
	if !validHost(host) {
		return target{}, fmt.Errorf("discovery: member %q: %q is neither an IP address nor a host name", m.Addr, host)
	}
	t.host = strings.TrimSuffix(host, ".")
	return t, nil
}

// validHost reports whether s can be a DNS host name: dot-separated
// labels of 1-63 letters, digits, hyphens and underscores, 253 bytes at
// most, an optional final dot.
func validHost(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
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
	return balancer.Backend{Addr: netip.AddrPortFrom(ip, t.port), Weight: t.m.Weight, Zone: t.m.Zone, Meta: t.m.Meta}
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
	return slices.ContainsFunc(ts, func(t target) bool { return t.host != "" })
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
		if t.host == "" {
			add(t.backend(t.ip))
			continue
		}
		ips, ok := resolved[t.host]
		if !ok {
			var err error
			ips, err = h.lookup(ctx, t.host)
			if err != nil {
				errs = append(errs, err)
				ips = h.last[t.host]
			}
			resolved[t.host] = ips
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
