package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lbkit/lbkit/balancer"
)

// Defaults of a DNS source.
const (
	DefaultMinTTL     = time.Second
	DefaultMaxTTL     = 5 * time.Minute
	DefaultDNSTimeout = 2 * time.Second
)

// ErrNoRecords is reported by a DNS source (through Sink.Fail) when a
// name has no records and DNSConfig.AllowEmpty is off.
var ErrNoRecords = errors.New("discovery: dns: no records")

// DNSConfig configures a DNS source.
type DNSConfig struct {
	// Name is the name to look up: a service name such as
	// "_http._tcp.web.example.test" for SRV, a host name for A/AAAA.
	// Required.
	Name string `json:"name" yaml:"name"`
	// Type is "SRV", "A", "AAAA", or empty for A and AAAA.
	//
	// SRV: the records of the lowest priority present are the members;
	// each record's weight is the member's weight (0 counts as 1) and its
	// port the member's port; its target's addresses come from the
	// answer's additional section or from A/AAAA look-ups. A record whose
	// target is "." (service not available) gives no member.
	Type string `json:"type,omitempty" yaml:"type,omitempty"`
	// Port is the members' port for A and AAAA. Required for them; not
	// allowed for SRV.
	Port uint16 `json:"port,omitempty" yaml:"port,omitempty"`
	// Weight is every member's weight for A and AAAA (SRV records carry
	// their own). Zero means 1.
	Weight uint32 `json:"weight,omitempty" yaml:"weight,omitempty"`
	// Zone and Meta are given to every member.
	Zone string            `json:"zone,omitempty" yaml:"zone,omitempty"`
	Meta map[string]string `json:"meta,omitempty" yaml:"meta,omitempty"`

	// Servers are the DNS servers asked, in order, as "IP" or "IP:port"
	// (port 53 by default); the next is asked when one fails. Empty
	// means the nameservers of /etc/resolv.conf.
	Servers []string `json:"servers,omitempty" yaml:"servers,omitempty"`
	// TCP asks over TCP only. By default queries go over UDP and are
	// repeated over TCP when the answer is truncated.
	TCP bool `json:"tcp,omitempty" yaml:"tcp,omitempty"`
	// Timeout bounds each query. Zero means DefaultDNSTimeout.
	Timeout time.Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`

	// MinTTL and MaxTTL bound the time between look-ups, which is
	// otherwise the smallest TTL of the records used (for a negative
	// answer, the zone's negative TTL). After a failed look-up the source
	// tries again after MinTTL, doubling up to MaxTTL while it keeps
	// failing. Zero means DefaultMinTTL and DefaultMaxTTL.
	MinTTL time.Duration `json:"min_ttl,omitempty" yaml:"min_ttl,omitempty"`
	MaxTTL time.Duration `json:"max_ttl,omitempty" yaml:"max_ttl,omitempty"`
	// AllowEmpty makes an answer with no records (NXDOMAIN, no data, only
	// unavailable SRV targets) remove every member of the source. By
	// default such an answer is a failure (ErrNoRecords) and the last
	// good members stay, so one bad answer or a zone being edited never
	// empties a pool.
	AllowEmpty bool `json:"allow_empty,omitempty" yaml:"allow_empty,omitempty"`
}

// DNS is a Source of the members a DNS name gives: the addresses of its
// A/AAAA records or the targets of its SRV records. It asks DNS servers
// directly (github.com/miekg/dns), so it sees each record's TTL, and
// looks the name up again when the TTL runs out. Create one with
// NewDNS. Its Watch may run in one goroutine at a time.
type DNS struct {
	cfg     DNSConfig
	name    string
	qtypes  []uint16
	servers []string
}

var _ Source = (*DNS)(nil)

// NewDNS checks cfg and returns its source. With no Servers it reads
// /etc/resolv.conf.
func NewDNS(cfg DNSConfig) (*DNS, error) {
	d := &DNS{cfg: cfg}
	if cfg.Name == "" {
		return nil, errors.New("discovery: dns: Name is required")
	}
	if _, ok := dns.IsDomainName(cfg.Name); !ok {
		return nil, fmt.Errorf("discovery: dns: %q is not a domain name", cfg.Name)
	}
	d.name = dns.Fqdn(cfg.Name)
	switch strings.ToUpper(cfg.Type) {
	case "SRV":
		if cfg.Port != 0 {
			return nil, fmt.Errorf("discovery: dns %s: SRV records carry the port; Port must be 0", d.name)
		}
		d.qtypes = []uint16{dns.TypeSRV}
	case "A":
		d.qtypes = []uint16{dns.TypeA}
	case "AAAA":
		d.qtypes = []uint16{dns.TypeAAAA}
	case "":
		d.qtypes = []uint16{dns.TypeA, dns.TypeAAAA}
	default:
		return nil, fmt.Errorf("discovery: dns %s: type %q: want SRV, A, AAAA or empty", d.name, cfg.Type)
	}
	if d.qtypes[0] != dns.TypeSRV && cfg.Port == 0 {
		return nil, fmt.Errorf("discovery: dns %s: Port is required for A and AAAA", d.name)
	}
	if cfg.Timeout < 0 || cfg.MinTTL < 0 || cfg.MaxTTL < 0 {
		return nil, fmt.Errorf("discovery: dns %s: negative timeout or TTL bound", d.name)
	}
	if d.cfg.Timeout == 0 {
		d.cfg.Timeout = DefaultDNSTimeout
	}
	if d.cfg.MinTTL == 0 {
		d.cfg.MinTTL = DefaultMinTTL
	}
	if d.cfg.MaxTTL == 0 {
		d.cfg.MaxTTL = max(DefaultMaxTTL, d.cfg.MinTTL)
	}
	if d.cfg.MaxTTL < d.cfg.MinTTL {
		return nil, fmt.Errorf("discovery: dns %s: MaxTTL %v is below MinTTL %v", d.name, d.cfg.MaxTTL, d.cfg.MinTTL)
	}
	servers := cfg.Servers
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("discovery: dns %s: no Servers and %w", d.name, err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
		if len(servers) == 0 {
			return nil, fmt.Errorf("discovery: dns %s: no Servers and none in /etc/resolv.conf", d.name)
		}
	}
	for _, s := range servers {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			d.servers = append(d.servers, ap.String())
		} else if ip, err := netip.ParseAddr(s); err == nil {
			d.servers = append(d.servers, netip.AddrPortFrom(ip, 53).String())
		} else {
			return nil, fmt.Errorf("discovery: dns %s: server %q is not IP or IP:port", d.name, s)
		}
	}
	return d, nil
}

// String names the source in log lines.
func (d *DNS) String() string {
	t := d.cfg.Type
	if t == "" {
		t = "A/AAAA"
	}
	return "dns " + strings.ToUpper(t) + " " + d.name
}

// Watch looks the name up, reports its members, and looks it up again
// when the smallest TTL of the records used runs out (bounded by MinTTL
// and MaxTTL). A failed look-up, or one with no records unless
// AllowEmpty is set, goes to sink.Fail and keeps the last members. It
// returns nil when ctx ends.
func (d *DNS) Watch(ctx context.Context, sink Sink) error {
	retry := d.cfg.MinTTL
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		set, ttl, err := d.Lookup(ctx)
		if ctx.Err() != nil {
			return nil
		}
		next := min(max(ttl, d.cfg.MinTTL), d.cfg.MaxTTL)
		switch {
		case err != nil:
			sink.Fail(err)
			next = retry
			retry = min(2*retry, d.cfg.MaxTTL)
		case len(set) == 0 && !d.cfg.AllowEmpty:
			sink.Fail(fmt.Errorf("%w for %s %s", ErrNoRecords, d.typeName(), d.name))
			retry = d.cfg.MinTTL
		default:
			sink.Set(set)
			retry = d.cfg.MinTTL
		}
		t.Reset(next)
	}
}

func (d *DNS) typeName() string {
	if len(d.qtypes) == 2 {
		return "A/AAAA"
	}
	return dns.TypeToString[d.qtypes[0]]
}

// Lookup looks the name up once and returns its members, sorted by
// address, and the smallest TTL of the records used (for an answer with
// no records, the negative TTL). It does not apply the TTL bounds.
func (d *DNS) Lookup(ctx context.Context) ([]balancer.Backend, time.Duration, error) {
	if d.qtypes[0] == dns.TypeSRV {
		return d.lookupSRV(ctx)
	}
	ips, ttl, err := d.addrs(ctx, d.name, nil)
	if err != nil {
		return nil, 0, err
	}
	set := make([]balancer.Backend, 0, len(ips))
	for _, ip := range ips {
		set = append(set, balancer.Backend{Addr: netip.AddrPortFrom(ip, d.cfg.Port), Weight: d.cfg.Weight, Zone: d.cfg.Zone, Meta: d.cfg.Meta})
	}
	return set, ttl, nil
}

func (d *DNS) lookupSRV(ctx context.Context) ([]balancer.Backend, time.Duration, error) {
	r, err := d.exchange(ctx, d.name, dns.TypeSRV)
	if err != nil {
		return nil, 0, err
	}
	var srvs []*dns.SRV
	ttl := time.Duration(-1)
	for _, rr := range r.Answer {
		if s, ok := rr.(*dns.SRV); ok {
			srvs = append(srvs, s)
		}
	}
	if len(srvs) == 0 {
		return nil, negativeTTL(r), nil
	}
	low := slices.MinFunc(srvs, func(a, b *dns.SRV) int { return int(a.Priority) - int(b.Priority) }).Priority
	var set []balancer.Backend
	seen := make(map[netip.AddrPort]bool)
	for _, s := range srvs {
		if s.Priority != low {
			continue
		}
		ttl = minTTL(ttl, s.Hdr.Ttl)
		if s.Target == "." {
			continue
		}
		ips, attl, err := d.addrs(ctx, s.Target, r.Extra)
		if err != nil {
			return nil, 0, err
		}
		ttl = min(ttl, attl)
		for _, ip := range ips {
			ap := netip.AddrPortFrom(ip, s.Port)
			if seen[ap] {
				continue
			}
			seen[ap] = true
			set = append(set, balancer.Backend{Addr: ap, Weight: uint32(s.Weight), Zone: d.cfg.Zone, Meta: d.cfg.Meta})
		}
	}
	slices.SortFunc(set, func(a, b balancer.Backend) int { return a.Addr.Compare(b.Addr) })
	return set, ttl, nil
}

// addrs returns the sorted A/AAAA addresses of name (as the source's
// Type asks: both for SRV targets and an empty Type) and their smallest
// TTL, or the negative TTL when there are none. Records in extra (an
// SRV answer's additional section) are used when they hold any for
// name.
func (d *DNS) addrs(ctx context.Context, name string, extra []dns.RR) ([]netip.Addr, time.Duration, error) {
	qtypes := d.qtypes
	if qtypes[0] == dns.TypeSRV {
		qtypes = []uint16{dns.TypeA, dns.TypeAAAA}
	}
	var ips []netip.Addr
	ttl := time.Duration(-1)
	collect := func(rrs []dns.RR, owner string) {
		for _, rr := range rrs {
			if owner != "" && !strings.EqualFold(rr.Header().Name, owner) {
				continue
			}
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			default:
				continue
			}
			if a, ok := netip.AddrFromSlice(ip); ok && slices.Contains(qtypes, rr.Header().Rrtype) {
				ips = append(ips, a.Unmap())
				ttl = minTTL(ttl, rr.Header().Ttl)
			}
		}
	}
	collect(extra, name)
	if len(ips) == 0 {
		neg := time.Duration(-1)
		for _, qt := range qtypes {
			r, err := d.exchange(ctx, name, qt)
			if err != nil {
				return nil, 0, err
			}
			collect(r.Answer, "") // CNAME chains end in records of another owner
			if n := negativeTTL(r); neg < 0 || n < neg {
				neg = n
			}
		}
		if len(ips) == 0 {
			return nil, neg, nil
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return slices.Compact(ips), ttl, nil
}

// exchange asks each server in turn for name and qtype and returns the
// first answer that is NOERROR or NXDOMAIN.
func (d *DNS) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	var errs []error
	for _, srv := range d.servers {
		r, err := d.ask(ctx, m, srv)
		if err == nil && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", srv, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("discovery: dns %s %s: %w", dns.TypeToString[qtype], name, errors.Join(errs...))
}

func (d *DNS) ask(ctx context.Context, m *dns.Msg, srv string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: d.cfg.Timeout}
	if d.cfg.TCP {
		c.Net = "tcp"
	}
	r, _, err := c.ExchangeContext(ctx, m, srv)
	if err == nil && r.Truncated && c.Net == "udp" {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, m, srv)
	}
	return r, err
}

// negativeTTL returns how long an answer with no records may be cached
// (RFC 2308: the smaller of the SOA record's TTL and its MINIMUM), or
// 0 when the answer carries no SOA.
func negativeTTL(r *dns.Msg) time.Duration {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// minTTL returns the smaller of d (negative: none yet) and ttl seconds.
func minTTL(d time.Duration, ttl uint32) time.Duration {
	t := time.Duration(ttl) * time.Second
	if d < 0 {
		return t
	}
	return min(d, t)
}
