package dnslb

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testZone = `
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 60
@        IN NS  ns1
ns1      IN A   198.18.0.53
www      IN CNAME svc
txt      IN TXT "hello"
a.b.deep IN A   198.18.0.54
`

// newPool returns a pool over addrs ("198.18.0.1:80" or "198.18.0.1:80/zone"
// forms are built by the caller) using builder (round robin if nil).
func newPool(t testing.TB, builder balancer.Builder, backends ...balancer.Backend) *balancer.Pool {
	t.Helper()
	if builder == nil {
		builder = roundrobin.Builder{}
	}
	p := balancer.MustNew(balancer.Config{Builder: builder})
	require.NoError(t, p.Set(backends))
	t.Cleanup(func() { p.Close() })
	return p
}

func be(addr string) balancer.Backend {
	return balancer.Backend{Addr: netip.MustParseAddrPort(addr)}
}

// startServer serves cfg on 127.0.0.1 (two UDP sockets and TCP) until the
// test ends and returns the address.
func startServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Zones == nil {
		cfg.Zones = []Zone{{Origin: "example.test.", Records: testZone}}
	}
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	udp, tcp, err := Listen(ctx, "127.0.0.1:0", 2)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, []net.Listener{tcp}) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return s, tcp.Addr().String()
}

// ask sends one query and returns the response.
func ask(t testing.TB, addr, netw, name string, qtype uint16, opts ...func(*dns.Msg)) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	for _, o := range opts {
		o(m)
	}
	c := &dns.Client{Net: netw, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	require.NoError(t, err)
	require.Equal(t, m.Id, r.Id)
	return r
}

func withEDNS(size uint16) func(*dns.Msg) {
	return func(m *dns.Msg) { m.SetEdns0(size, false) }
}

func withECS(prefix string) func(*dns.Msg) {
	return func(m *dns.Msg) {
		p := netip.MustParsePrefix(prefix)
		o := m.IsEdns0()
		if o == nil {
			m.SetEdns0(1232, false)
			o = m.IsEdns0()
		}
		fam := uint16(1)
		if p.Addr().Is6() {
			fam = 2
		}
		o.Option = append(o.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: fam,
			SourceNetmask: uint8(p.Bits()), Address: p.Addr().AsSlice()})
	}
}

func addrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

func ecsScope(t testing.TB, r *dns.Msg) (uint8, bool) {
	t.Helper()
	o := r.IsEdns0()
	if o == nil {
		return 0, false
	}
	for _, op := range o.Option {
		if s, ok := op.(*dns.EDNS0_SUBNET); ok {
			return s.SourceScope, true
		}
	}
	return 0, false
}

func TestZoneAnswers(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"), be("[2001:db8::1]:80"))
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
	for _, netw := range []string{"udp", "tcp"} {
		t.Run(netw, func(t *testing.T) {
			tests := []struct {
				name    string
				qtype   uint16
				rcode   int
				answers int
				soa     bool // SOA in authority
			}{
				{"svc.example.test.", dns.TypeA, dns.RcodeSuccess, 2, false},
				{"SVC.Example.TEST.", dns.TypeAAAA, dns.RcodeSuccess, 1, false},
				{"svc.example.test.", dns.TypeTXT, dns.RcodeSuccess, 0, true},
				{"svc.example.test.", dns.TypeANY, dns.RcodeSuccess, 1, false},
				{"example.test.", dns.TypeSOA, dns.RcodeSuccess, 1, false},
				{"example.test.", dns.TypeNS, dns.RcodeSuccess, 1, false},
				{"example.test.", dns.TypeA, dns.RcodeSuccess, 0, true},
				{"www.example.test.", dns.TypeA, dns.RcodeSuccess, 3, false}, // CNAME to the service, followed
				{"txt.example.test.", dns.TypeTXT, dns.RcodeSuccess, 1, false},
				{"deep.example.test.", dns.TypeA, dns.RcodeSuccess, 0, true}, // empty non-terminal
				{"b.deep.example.test.", dns.TypeA, dns.RcodeSuccess, 0, true},
				{"a.b.deep.example.test.", dns.TypeA, dns.RcodeSuccess, 1, false},
				{"nope.example.test.", dns.TypeA, dns.RcodeNameError, 0, true},
				{"x.svc.example.test.", dns.TypeA, dns.RcodeNameError, 0, true},
				{"example.org.", dns.TypeA, dns.RcodeRefused, 0, false},
				{".", dns.TypeNS, dns.RcodeRefused, 0, false},
				{"example.test.", dns.TypeAXFR, dns.RcodeRefused, 0, false},
			}
			for _, tc := range tests {
				t.Run(fmt.Sprintf("%s/%s", tc.name, dns.TypeToString[tc.qtype]), func(t *testing.T) {
					if tc.qtype == dns.TypeAXFR && netw == "udp" {
						t.Skip("AXFR is asked over TCP")
					}
					r := ask(t, addr, netw, tc.name, tc.qtype)
					assert.Equal(t, dns.RcodeToString[tc.rcode], dns.RcodeToString[r.Rcode])
					assert.Len(t, r.Answer, tc.answers)
					assert.False(t, r.RecursionAvailable)
					assert.False(t, r.Truncated)
					assert.Equal(t, tc.rcode != dns.RcodeRefused, r.Authoritative, "AA only on answers from our zones")
					if tc.soa {
						require.Len(t, r.Ns, 1)
						soa, ok := r.Ns[0].(*dns.SOA)
						require.True(t, ok)
						assert.Equal(t, "example.test.", dns.CanonicalName(soa.Hdr.Name))
						assert.Equal(t, uint32(60), soa.Hdr.Ttl, "negative TTL = min(SOA TTL, MINIMUM)")
					} else {
						assert.Empty(t, r.Ns)
					}
					require.Len(t, r.Question, 1)
					assert.Equal(t, tc.name, r.Question[0].Name, "question echoed as asked")
				})
			}
		})
	}
}

func TestServiceTTLAndSRV(t *testing.T) {
	pool := newPool(t, nil,
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.1:8080"), Weight: 3},
		be("198.18.0.2:8080"),
		be("[2001:db8::1]:8443"))
	_, addr := startServer(t, Config{Services: []Service{{Name: "_http._tcp.example.test.", Pool: pool, TTL: 7 * time.Second}}})
	r := ask(t, addr, "udp", "_http._tcp.example.test.", dns.TypeA)
	require.Len(t, r.Answer, 2)
	assert.Equal(t, uint32(7), r.Answer[0].Header().Ttl)

	r = ask(t, addr, "udp", "_http._tcp.example.test.", dns.TypeSRV, withEDNS(1232))
	require.Len(t, r.Answer, 3)
	targets := map[string][2]uint16{}
	for _, rr := range r.Answer {
		srv := rr.(*dns.SRV)
		targets[srv.Target] = [2]uint16{srv.Port, srv.Weight}
	}
	assert.Equal(t, map[string][2]uint16{
		"ip4-198-18-0-1._http._tcp.example.test.":                       {8080, 30},
		"ip4-198-18-0-2._http._tcp.example.test.":                       {8080, 10},
		"ip6-20010db8000000000000000000000001._http._tcp.example.test.": {8443, 10},
	}, targets)
	assert.Len(t, r.Extra, 4, "three glue records and OPT")

	r = ask(t, addr, "udp", "ip4-198-18-0-1._http._tcp.example.test.", dns.TypeA)
	assert.Equal(t, []string{"198.18.0.1"}, addrs(r))
	r = ask(t, addr, "udp", "ip4-198-18-0-1._http._tcp.example.test.", dns.TypeAAAA)
	assert.Empty(t, r.Answer)
	assert.Equal(t, dns.RcodeSuccess, r.Rcode)
	require.Len(t, r.Ns, 1)

	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:8080"), false)
	r = ask(t, addr, "udp", "ip4-198-18-0-1._http._tcp.example.test.", dns.TypeA)
	assert.Equal(t, dns.RcodeNameError, r.Rcode, "a target that is no longer ready does not exist")
}

func TestPolicyAllRotates(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"), be("198.18.0.3:80"))
	_, addr := startServer(t, Config{UDPSockets: 1, Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
	first := map[string]int{}
	for range 30 {
		r := ask(t, addr, "tcp", "svc.example.test.", dns.TypeA)
		got := addrs(r)
		require.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"}, got)
		first[got[0]]++
	}
	assert.Len(t, first, 3, "each address comes first in turn")
	r := ask(t, addr, "udp", "svc.example.test.", dns.TypeA, withECS("203.0.113.0/24"))
	scope, ok := ecsScope(t, r)
	require.True(t, ok)
	assert.Equal(t, uint8(0), scope, "the answer does not depend on the client")
	before := pool.Snapshot().Ready
	_ = ask(t, addr, "udp", "svc.example.test.", dns.TypeA)
	assert.Equal(t, before, pool.Snapshot().Ready, "the pool's ready set is never reordered")
}

// TestPolicyWeighted: the pool's policy (here weighted round robin)
// decides who is named first.
func TestPolicyWeighted(t *testing.T) {
	pool := newPool(t, weighted.Builder{},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.1:80"), Weight: 1},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.2:80"), Weight: 3},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.3:80"), Weight: 6})
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool, Policy: PolicyWeighted, Count: 2}}})
	first := map[string]int{}
	const n = 1000
	for range n {
		got := addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA))
		require.Len(t, got, 2)
		require.NotEqual(t, got[0], got[1], "no repetition")
		first[got[0]]++
	}
	// Expected first-position shares 0.1, 0.3, 0.6: allow ±0.06 (≈ 4σ).
	assert.InDelta(t, 0.1, float64(first["198.18.0.1"])/n, 0.06, "%v", first)
	assert.InDelta(t, 0.3, float64(first["198.18.0.2"])/n, 0.06, "%v", first)
	assert.InDelta(t, 0.6, float64(first["198.18.0.3"])/n, 0.06, "%v", first)
}

func TestPolicyConsistent(t *testing.T) {
	var backends []balancer.Backend
	for i := 1; i <= 5; i++ {
		backends = append(backends, be(fmt.Sprintf("198.18.0.%d:80", i)))
	}
	// Ring hash moves only the removed backend's keys.
	pool := newPool(t, ringhash.Builder{}, backends...)
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool, Policy: PolicyConsistent}}})
	subnets := make([]string, 40)
	before := make(map[string]string)
	for i := range subnets {
		subnets[i] = fmt.Sprintf("203.0.%d.0/24", i)
		got := addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA, withECS(subnets[i])))
		require.Len(t, got, 1)
		before[subnets[i]] = got[0]
		// Same subnet, other host bits via a longer ECS prefix: same answer.
		again := ask(t, addr, "tcp", "svc.example.test.", dns.TypeA, withECS(fmt.Sprintf("203.0.%d.77/32", i)))
		assert.Equal(t, got, addrs(again))
		scope, ok := ecsScope(t, again)
		require.True(t, ok)
		assert.Equal(t, uint8(24), scope, "keyed on the /24")
	}
	spread := map[string]bool{}
	for _, a := range before {
		spread[a] = true
	}
	assert.GreaterOrEqual(t, len(spread), 4, "subnets spread over backends")

	dead := before[subnets[0]]
	pool.SetHealthy(netip.MustParseAddrPort(dead+":80"), false)
	for _, sn := range subnets {
		got := addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA, withECS(sn)))
		require.Len(t, got, 1)
		assert.NotEqual(t, dead, got[0])
		if before[sn] != dead {
			assert.Equal(t, before[sn], got[0], "subnets on healthy backends keep their answer")
		}
	}
	// Without ECS the source address (127.0.0.1) is the key: stable too.
	a1 := addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA))
	a2 := addrs(ask(t, addr, "tcp", "svc.example.test.", dns.TypeA))
	assert.Equal(t, a1, a2)
}

func TestPolicyNearest(t *testing.T) {
	pool := newPool(t, nil,
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.1.1:80"), Zone: "ams"},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.1.2:80"), Zone: "ams"},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.2.1:80"), Zone: "nyc"},
		balancer.Backend{Addr: netip.MustParseAddrPort("[2001:db8:2::1]:80"), Zone: "nyc"})
	rules := []ZoneRule{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Zone: "ams"},
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Zone: "nyc"},
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Zone: "nyc"},
		{Prefix: netip.MustParsePrefix("2001:db8:aaaa::/48"), Zone: "nyc"},
	}
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool, Policy: PolicyNearest, Zones: rules}}})
	tests := []struct {
		name   string
		ecs    string
		qtype  uint16
		want   []string
		scope  uint8
		hasECS bool
	}{
		// 10.9/24 shares 12 bits with the nested 10.1/16: the ams answer
		// holds for 10.8.0.0/13.
		{"ams by /8", "10.9.0.0/24", dns.TypeA, []string{"198.18.1.1", "198.18.1.2"}, 13, true},
		{"nyc by /16 inside /8", "10.1.7.0/24", dns.TypeA, []string{"198.18.2.1"}, 16, true},
		// 10.0.0.0/24 is in the /8 and next to the /16: the answer holds
		// for 10.0.0.0/16 only (common prefix with 10.1/16 is 15 bits).
		{"ams scope narrowed by a nested rule", "10.0.0.0/24", dns.TypeA, []string{"198.18.1.1", "198.18.1.2"}, 16, true},
		{"no rule: every zone", "192.0.2.0/24", dns.TypeA, []string{"198.18.1.1", "198.18.1.2", "198.18.2.1"}, 1, true},
		{"source address without ECS", "", dns.TypeA, []string{"198.18.2.1"}, 0, false},
		{"IPv6 client to nyc AAAA", "2001:db8:aaaa:1::/56", dns.TypeAAAA, []string{"2001:db8:2::1"}, 48, true},
		{"IPv6 client outside the rules: every zone", "2001:db8:bbbb::/56", dns.TypeAAAA, []string{"2001:db8:2::1"}, 36, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var opts []func(*dns.Msg)
			if tc.ecs != "" {
				opts = append(opts, withECS(tc.ecs))
			}
			r := ask(t, addr, "udp", "svc.example.test.", tc.qtype, opts...)
			assert.ElementsMatch(t, tc.want, addrs(r))
			scope, ok := ecsScope(t, r)
			require.Equal(t, tc.hasECS, ok, "ECS echoed only when asked")
			if ok {
				assert.Equal(t, tc.scope, scope)
			}
		})
	}

	// Zone fallback: ams down → ams clients get nyc.
	pool.SetHealthy(netip.MustParseAddrPort("198.18.1.1:80"), false)
	pool.SetDraining(netip.MustParseAddrPort("198.18.1.2:80"), true)
	r := ask(t, addr, "udp", "svc.example.test.", dns.TypeA, withECS("10.9.0.0/24"))
	assert.Equal(t, []string{"198.18.2.1"}, addrs(r))
}

func TestHealthTransitions(t *testing.T) {
	a1, a2 := netip.MustParseAddrPort("198.18.0.1:80"), netip.MustParseAddrPort("198.18.0.2:80")
	pool := newPool(t, nil, be(a1.String()), be(a2.String()))
	sfPool := newPool(t, nil, be(a1.String()))
	_, addr := startServer(t, Config{Services: []Service{
		{Name: "svc.example.test.", Pool: pool},
		{Name: "sf.example.test.", Pool: sfPool, Fallback: FallbackServFail},
	}})
	q := func() []string { return addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA)) }
	assert.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2"}, q())
	pool.SetHealthy(a1, false)
	assert.Equal(t, []string{"198.18.0.2"}, q())
	pool.SetDraining(a2, true)
	assert.Equal(t, []string{"198.18.0.1"}, q(), "nothing ready: every non-draining member (panic)")
	pool.SetDraining(a2, false)
	pool.SetHealthy(a1, true)
	assert.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2"}, q())
	pool.SetDraining(a1, true)
	pool.SetDraining(a2, true)
	r := ask(t, addr, "udp", "svc.example.test.", dns.TypeA)
	assert.Equal(t, dns.RcodeServerFailure, r.Rcode, "every member draining")

	sfPool.SetHealthy(a1, false)
	r = ask(t, addr, "tcp", "sf.example.test.", dns.TypeA)
	assert.Equal(t, dns.RcodeServerFailure, r.Rcode)
	r = ask(t, addr, "tcp", "sf.example.test.", dns.TypeAAAA)
	assert.Equal(t, dns.RcodeSuccess, r.Rcode, "no IPv6 member: NODATA, not SERVFAIL")
	assert.Empty(t, r.Answer)
}

func TestTruncationRetriesOverTCP(t *testing.T) {
	var backends []balancer.Backend
	for i := range 100 {
		backends = append(backends, be(fmt.Sprintf("198.18.%d.%d:80", i/250, 1+i%250)))
	}
	pool := newPool(t, nil, backends...)
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool}}})

	for _, size := range []uint16{0, 512, 1232, 4096} {
		t.Run(fmt.Sprint("edns=", size), func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion("svc.example.test.", dns.TypeA)
			allowed := 512
			if size > 0 {
				m.SetEdns0(size, false)
				allowed = min(int(size), DefaultMaxUDPSize)
			}
			raw := rawExchange(t, addr, m)
			assert.LessOrEqual(t, len(raw), allowed)
			var r dns.Msg
			require.NoError(t, r.Unpack(raw))
			assert.True(t, r.Truncated, "100 A records (1600 bytes) do not fit")
			assert.Empty(t, r.Answer)
			assert.Equal(t, size > 0, r.IsEdns0() != nil)
		})
	}
	// dns.Client retries over TCP itself? It does not: do as a stub does.
	r := ask(t, addr, "udp", "svc.example.test.", dns.TypeA)
	require.True(t, r.Truncated)
	r = ask(t, addr, "tcp", "svc.example.test.", dns.TypeA)
	assert.False(t, r.Truncated)
	assert.Len(t, r.Answer, 100)
}

// rawExchange sends m over UDP and returns the raw response.
func rawExchange(t testing.TB, addr string, m *dns.Msg) []byte {
	t.Helper()
	pkt, err := m.Pack()
	require.NoError(t, err)
	return rawUDP(t, addr, pkt, 5*time.Second)
}

// rawUDP sends pkt and returns the response, or nil after wait.
func rawUDP(t testing.TB, addr string, pkt []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write(pkt)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func TestMalformedAndUnsupported(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	s, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
	good := new(dns.Msg)
	good.SetQuestion("svc.example.test.", dns.TypeA)
	goodPkt, err := good.Pack()
	require.NoError(t, err)

	twoQ := good.Copy()
	twoQ.Question = append(twoQ.Question, twoQ.Question[0])
	notify := good.Copy()
	notify.Opcode = dns.OpcodeNotify
	badVers := good.Copy()
	badVers.SetEdns0(1232, false)
	badVers.IsEdns0().SetVersion(1)
	chaos := good.Copy()
	chaos.Question[0].Qclass = dns.ClassCHAOS
	badECS := good.Copy()
	badECS.SetEdns0(1232, false)
	badECS.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, SourceScope: 8, Address: net.IPv4(10, 0, 0, 0)}}
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name  string
		pkt   []byte
		rcode int // -1: no response
	}{
		{"two questions", pack(twoQ), dns.RcodeFormatError},
		{"NOTIFY", pack(notify), dns.RcodeNotImplemented},
		{"EDNS version 1", pack(badVers), dns.RcodeBadVers},
		{"CHAOS class", pack(chaos), dns.RcodeRefused},
		{"ECS with scope in a query", pack(badECS), dns.RcodeFormatError},
		{"truncated question", goodPkt[:len(goodPkt)-2], dns.RcodeFormatError},
		{"trailing garbage", append(append([]byte{}, goodPkt...), 1, 2, 3), dns.RcodeFormatError},
		{"short header", goodPkt[:5], -1},
		{"datagram over 4 KiB", append(append([]byte{}, goodPkt...), make([]byte, 5000)...), -1},
		{"a response", func() []byte { b := append([]byte{}, goodPkt...); b[2] |= 0x80; return b }(), -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wait := 5 * time.Second
			if tc.rcode < 0 {
				wait = 300 * time.Millisecond
			}
			raw := rawUDP(t, addr, tc.pkt, wait)
			if tc.rcode < 0 {
				assert.Nil(t, raw)
				return
			}
			require.NotNil(t, raw)
			var r dns.Msg
			require.NoError(t, r.Unpack(raw))
			assert.Equal(t, dns.RcodeToString[tc.rcode], dns.RcodeToString[r.Rcode])
			assert.True(t, r.Response)
			assert.Equal(t, binaryID(tc.pkt), r.Id)
		})
	}
	assert.Equal(t, uint64(3), s.Stats().Dropped)
}

func binaryID(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func TestRateLimit(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	// 0.001/s: no token comes back during the test, whatever its speed.
	s, addr := startServer(t, Config{
		Services:  []Service{{Name: "svc.example.test.", Pool: pool}},
		RateLimit: RateLimit{Rate: 0.001, Burst: 5, Slip: 2},
	})
	// Send all queries from one socket, wait until the server has
	// handled them, then collect what came back.
	c, err := net.Dial("udp", addr)
	require.NoError(t, err)
	defer c.Close()
	for i := range 11 {
		m := new(dns.Msg)
		m.SetQuestion("svc.example.test.", dns.TypeA)
		m.Id = uint16(1000 + i)
		pkt, err := m.Pack()
		require.NoError(t, err)
		_, err = c.Write(pkt)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { st := s.Stats(); return st.Responses+st.RateLimited-st.Slipped == 11 },
		10*time.Second, 5*time.Millisecond)
	var answered, truncated int
	buf := make([]byte, 65535)
	for {
		// Answers already sent are queued on loopback: the deadline
		// only ends the loop.
		require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Second)))
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		var r dns.Msg
		require.NoError(t, r.Unpack(buf[:n]))
		if r.Truncated {
			truncated++
			assert.Empty(t, r.Answer)
			continue
		}
		answered++
	}
	assert.Equal(t, 5, answered, "burst")
	assert.Equal(t, 3, truncated, "every 2nd limited response slips")
	st := s.Stats()
	assert.Equal(t, uint64(6), st.RateLimited)
	assert.Equal(t, uint64(3), st.Slipped)

	// TCP is never limited.
	for range 3 {
		r := ask(t, addr, "tcp", "svc.example.test.", dns.TypeA)
		assert.Len(t, r.Answer, 1)
	}
}

func TestConfigErrors(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	z := []Zone{{Origin: "example.test.", Records: testZone}}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no zones", Config{}},
		{"no SOA", Config{Zones: []Zone{{Origin: "x.test.", Records: "@ IN NS ns1\n"}}}},
		{"record outside", Config{Zones: []Zone{{Origin: "x.test.", Records: "@ IN SOA a b 1 2 3 4 5\nfoo.other. IN A 1.2.3.4\n"}}}},
		{"CNAME at a delegation", Config{Zones: []Zone{{Origin: "x.test.", Records: "@ IN SOA a b 1 2 3 4 5\nsub IN NS ns.other.\nsub IN CNAME x.test.\n"}}}},
		{"wildcard not leftmost", Config{Zones: []Zone{{Origin: "x.test.", Records: "@ IN SOA a b 1 2 3 4 5\na.*.b IN A 192.0.2.1\n"}}}},
		{"parse error", Config{Zones: []Zone{{Origin: "x.test.", Records: "@ IN SOA a b\n"}}}},
		{"service outside zones", Config{Zones: z, Services: []Service{{Name: "svc.other.", Pool: pool}}}},
		{"service without pool", Config{Zones: z, Services: []Service{{Name: "svc.example.test."}}}},
		{"service over CNAME", Config{Zones: z, Services: []Service{{Name: "www.example.test.", Pool: pool}}}},
		{"key prefix out of range", Config{Zones: z, Services: []Service{{Name: "s.example.test.", Pool: pool, Policy: PolicyConsistent,
			Key: balancer.Key{Source: balancer.KeyClient, Bits4: 33}}}}},
		{"service twice", Config{Zones: z, Services: []Service{{Name: "s.example.test.", Pool: pool}, {Name: "S.example.test", Pool: pool}}}},
		{"bad rate", Config{Zones: z, RateLimit: RateLimit{Rate: -1}}},
		{"bad UDP size", Config{Zones: z, MaxUDPSize: 100}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "dnslb: ")
		})
	}
}

func TestServeTwiceAndShutdown(t *testing.T) {
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}}})
	require.NoError(t, err)
	udp, tcp, err := Listen(context.Background(), "127.0.0.1:0", 1)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), udp, []net.Listener{tcp}) }()
	r := ask(t, tcp.Addr().String(), "tcp", "example.test.", dns.TypeSOA)
	require.Len(t, r.Answer, 1)
	require.NoError(t, s.Shutdown(context.Background()))
	require.NoError(t, <-done)
	assert.ErrorIs(t, s.Serve(context.Background(), nil, nil), ErrServerClosed)
}

// plainPacketConn hides *net.UDPConn, so the server uses its portable
// read loop instead of the batched Linux one.
type plainPacketConn struct{ net.PacketConn }

func TestPortableUDPLoop(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
	require.NoError(t, err)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, []net.PacketConn{plainPacketConn{pc}}, nil) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	r := ask(t, pc.LocalAddr().String(), "udp", "svc.example.test.", dns.TypeA)
	assert.Len(t, r.Answer, 2)
	r = ask(t, pc.LocalAddr().String(), "udp", "nope.example.test.", dns.TypeA)
	assert.Equal(t, dns.RcodeNameError, r.Rcode)
}

func TestTCPPipeliningAndLimits(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	s, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool}}, MaxTCPConns: 1})
	c, err := dns.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	ids := map[uint16]bool{}
	for _, name := range []string{"svc.example.test.", "nope.example.test.", "example.test."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		ids[m.Id] = true
		require.NoError(t, c.WriteMsg(m))
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	for range 3 {
		r, err := c.ReadMsg()
		require.NoError(t, err)
		assert.True(t, ids[r.Id], "answers to the pipelined queries, in any order")
		delete(ids, r.Id)
	}

	// A second connection is over MaxTCPConns: closed without an answer.
	c2, err := dns.Dial("tcp", addr)
	require.NoError(t, err)
	defer c2.Close()
	m := new(dns.Msg)
	m.SetQuestion("svc.example.test.", dns.TypeA)
	_ = c2.WriteMsg(m) // may already fail: the server closed it
	require.NoError(t, c2.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c2.ReadMsg()
	assert.Error(t, err)
	assert.GreaterOrEqual(t, s.Stats().Responses, uint64(3))
}

// TestAsMiekgHandler runs the server as a dns.Handler inside a miekg/dns
// server.
func TestAsMiekgHandler(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
	require.NoError(t, err)
	for _, netw := range []string{"udp", "tcp"} {
		t.Run(netw, func(t *testing.T) {
			started := make(chan struct{})
			srv := &dns.Server{Addr: "127.0.0.1:0", Net: netw, Handler: s, NotifyStartedFunc: func() { close(started) }}
			done := make(chan error, 1)
			go func() { done <- srv.ListenAndServe() }()
			<-started
			var addr string
			if netw == "udp" {
				addr = srv.PacketConn.LocalAddr().String()
			} else {
				addr = srv.Listener.Addr().String()
			}
			r := ask(t, addr, netw, "svc.example.test.", dns.TypeA)
			assert.Equal(t, []string{"198.18.0.1"}, addrs(r))
			r = ask(t, addr, netw, "example.org.", dns.TypeA)
			assert.Equal(t, dns.RcodeRefused, r.Rcode)
			require.NoError(t, srv.Shutdown())
			<-done
		})
	}
}

func TestListenAndServe(t *testing.T) {
	s, err := New(Config{UDPSockets: 2, Zones: []Zone{{Origin: "example.test.", Records: testZone}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.NoError(t, s.ListenAndServe(ctx, "127.0.0.1:0"), "stops when ctx ends")

	s, err = New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}}})
	require.NoError(t, err)
	err = s.ListenAndServe(context.Background(), "no-port")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "dnslb: listen address")
}

func TestIPv6Loopback(t *testing.T) {
	pool := newPool(t, nil,
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.1:80"), Zone: "v4"},
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.2:80"), Zone: "v6clients"})
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool, Policy: PolicyNearest,
			Zones: []ZoneRule{{Prefix: netip.MustParsePrefix("::1/128"), Zone: "v6clients"}}}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	udp, tcp, err := Listen(ctx, "[::1]:0", 2)
	if err != nil {
		cancel()
		t.Skipf("no IPv6 loopback: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, []net.Listener{tcp}) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	for _, netw := range []string{"udp", "tcp"} {
		r := ask(t, tcp.Addr().String(), netw, "svc.example.test.", dns.TypeA)
		assert.Equal(t, []string{"198.18.0.2"}, addrs(r), "%s: the source ::1 maps to its zone", netw)
	}
}
