package dnslb

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cnameZone has CNAMEs to a service (svc), to static data, chained, in a
// loop, dangling and out of the zone.
const cnameZone = `
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 60
@        IN NS  ns1
ns1      IN A   198.18.0.53
txt      IN TXT "hello"
cn       IN CNAME svc
cn2      IN CNAME cn
CnCase   IN CNAME SVC.Example.Test.
txtcn    IN CNAME txt
dangling IN CNAME nope
ext      IN CNAME www.example.org.
loop1    IN CNAME loop2
loop2    IN CNAME loop1
hostcn   IN CNAME ip4-198-18-0-1.svc
`

// newUnstarted returns a server (not listening) for cnameZone with svc
// served from two IPv4 backends with a 300 s TTL, and a worker of it.
func newUnstarted(t testing.TB, cfg Config) (*Server, *worker) {
	t.Helper()
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))
	cfg.Zones = []Zone{{Origin: "example.test.", Records: cnameZone}}
	cfg.Services = []Service{{Name: "svc.example.test.", Pool: pool, TTL: 300 * time.Second}}
	cfg.Logger = quiet
	s, err := New(cfg)
	require.NoError(t, err)
	return s, s.newWorker()
}

// exchange answers pkt from src through w over UDP (or TCP) and returns
// the parsed response, nil when there is none.
func exchange(t testing.TB, w *worker, pkt []byte, src string, tcp bool) *dns.Msg {
	t.Helper()
	out := w.respond(pkt, netip.MustParseAddrPort(src), tcp)
	if out == nil {
		return nil
	}
	var r dns.Msg
	require.NoError(t, r.Unpack(out[2:]))
	return &r
}

func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.ToLower(rr.String()))
	}
	slices.Sort(out)
	return out
}

func TestCNAMEFollowedInZone(t *testing.T) {
	_, w := newUnstarted(t, Config{})
	cn := func(owner, target string) string {
		return fmt.Sprintf("%s.example.test.\t300\tin\tcname\t%s", owner, target)
	}
	svcA := []string{"svc.example.test.\t300\tin\ta\t198.18.0.1", "svc.example.test.\t300\tin\ta\t198.18.0.2"}
	tests := []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string
		soa    bool
	}{
		{"cn", dns.TypeA, dns.RcodeSuccess, append([]string{cn("cn", "svc.example.test.")}, svcA...), false},
		{"cn2", dns.TypeA, dns.RcodeSuccess, append([]string{cn("cn2", "cn.example.test."), cn("cn", "svc.example.test.")}, svcA...), false},
		{"cncase", dns.TypeA, dns.RcodeSuccess, append([]string{cn("cncase", "svc.example.test.")}, svcA...), false},
		{"cn", dns.TypeAAAA, dns.RcodeSuccess, []string{cn("cn", "svc.example.test.")}, true},
		{"cn", dns.TypeTXT, dns.RcodeSuccess, []string{cn("cn", "svc.example.test.")}, true},
		{"cn", dns.TypeCNAME, dns.RcodeSuccess, []string{cn("cn", "svc.example.test.")}, false},
		{"txtcn", dns.TypeTXT, dns.RcodeSuccess, []string{cn("txtcn", "txt.example.test."), "txt.example.test.\t300\tin\ttxt\t\"hello\""}, false},
		{"dangling", dns.TypeA, dns.RcodeNameError, []string{cn("dangling", "nope.example.test.")}, true},
		{"ext", dns.TypeA, dns.RcodeSuccess, []string{cn("ext", "www.example.org.")}, false},
		{"hostcn", dns.TypeA, dns.RcodeSuccess, []string{cn("hostcn", "ip4-198-18-0-1.svc.example.test."),
			"ip4-198-18-0-1.svc.example.test.\t300\tin\ta\t198.18.0.1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
			for _, tcp := range []bool{false, true} {
				r := exchange(t, w, packQuery(t, tc.name+".example.test.", tc.qtype), "192.0.2.1:5353", tcp)
				require.NotNil(t, r)
				assert.Equal(t, dns.RcodeToString[tc.rcode], dns.RcodeToString[r.Rcode])
				assert.True(t, r.Authoritative)
				assert.Equal(t, sorted(tc.answer), rrStrings(r.Answer))
				require.NotEmpty(t, r.Answer)
				assert.Equal(t, dns.TypeCNAME, r.Answer[0].Header().Rrtype, "the chain comes first")
				if tc.soa {
					require.Len(t, r.Ns, 1)
					assert.Equal(t, "example.test.", r.Ns[0].Header().Name)
					assert.Equal(t, dns.TypeSOA, r.Ns[0].Header().Rrtype)
				} else {
					assert.Empty(t, r.Ns)
				}
			}
		})
	}

	t.Run("SRV through a CNAME", func(t *testing.T) {
		r := exchange(t, w, packQuery(t, "cn.example.test.", dns.TypeSRV, withEDNS(1232)), "192.0.2.1:5353", false)
		require.NotNil(t, r)
		require.Len(t, r.Answer, 3)
		for _, rr := range r.Answer[1:] {
			assert.Equal(t, "svc.example.test.", rr.Header().Name)
			assert.Equal(t, dns.TypeSRV, rr.Header().Rrtype)
		}
		assert.Len(t, r.Extra, 3, "two glue records and OPT")
	})

	t.Run("loop ends where it repeats", func(t *testing.T) {
		r := exchange(t, w, packQuery(t, "loop1.example.test.", dns.TypeA), "192.0.2.1:5353", true)
		require.NotNil(t, r)
		assert.Equal(t, dns.RcodeSuccess, r.Rcode)
		assert.Equal(t, []string{cn("loop1", "loop2.example.test."), cn("loop2", "loop1.example.test.")}, rrStrings(r.Answer))
	})

	t.Run("long chain is bounded", func(t *testing.T) {
		var zone strings.Builder
		zone.WriteString("@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n")
		for i := range 20 {
			fmt.Fprintf(&zone, "c%d IN CNAME c%d\n", i, i+1)
		}
		s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: zone.String()}}})
		require.NoError(t, err)
		r := exchange(t, s.newWorker(), packQuery(t, "c0.example.test.", dns.TypeA), "192.0.2.1:5353", true)
		require.NotNil(t, r)
		assert.Equal(t, dns.RcodeSuccess, r.Rcode)
		require.Len(t, r.Answer, maxCNAMEChain+1)
		for i, rr := range r.Answer {
			assert.Equal(t, fmt.Sprintf("c%d.example.test.", i), rr.Header().Name)
		}
	})
}

func TestConformanceSmallFixes(t *testing.T) {
	_, w := newUnstarted(t, Config{MaxUDPSize: 1400})
	src := "192.0.2.1:5353"

	t.Run("DO bit echoed", func(t *testing.T) {
		for _, do := range []bool{false, true} {
			r := exchange(t, w, packQuery(t, "svc.example.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, do) }), src, false)
			require.NotNil(t, r)
			require.NotNil(t, r.IsEdns0())
			assert.Equal(t, do, r.IsEdns0().Do())
		}
	})

	t.Run("class ANY answered as IN", func(t *testing.T) {
		r := exchange(t, w, packQuery(t, "svc.example.test.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }), src, false)
		require.NotNil(t, r)
		assert.Equal(t, dns.RcodeSuccess, r.Rcode)
		assert.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2"}, addrs(r))
		assert.Equal(t, uint16(dns.ClassANY), r.Question[0].Qclass, "question echoed as asked")
		require.NotEmpty(t, r.Answer)
		assert.Equal(t, uint16(dns.ClassINET), r.Answer[0].Header().Class)
	})

	t.Run("unknown opcode echoes RD only", func(t *testing.T) {
		for _, op := range []int{3, dns.OpcodeNotify, dns.OpcodeUpdate, 15} {
			r := exchange(t, w, packQuery(t, "svc.example.test.", dns.TypeA, func(m *dns.Msg) {
				m.Opcode = op
				m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData = true, true, true
			}), src, false)
			require.NotNil(t, r)
			assert.Equal(t, dns.RcodeNotImplemented, r.Rcode)
			assert.Equal(t, op, r.Opcode)
			assert.True(t, r.RecursionDesired, "opcode %d", op)
			assert.False(t, r.CheckingDisabled, "opcode %d", op)
			assert.False(t, r.AuthenticatedData, "opcode %d", op)
		}
		r := exchange(t, w, packQuery(t, "svc.example.test.", dns.TypeA, func(m *dns.Msg) { m.CheckingDisabled = true }), src, false)
		assert.True(t, r.CheckingDisabled, "a standard query keeps CD")
	})

	t.Run("TYPE0 is NOTIMP", func(t *testing.T) {
		r := exchange(t, w, packQuery(t, "svc.example.test.", 0), src, false)
		require.NotNil(t, r)
		assert.Equal(t, dns.RcodeToString[dns.RcodeNotImplemented], dns.RcodeToString[r.Rcode])
	})

	t.Run("TCP OPT advertises the UDP size", func(t *testing.T) {
		for _, tcp := range []bool{false, true} {
			r := exchange(t, w, packQuery(t, "svc.example.test.", dns.TypeA, withEDNS(4096)), src, tcp)
			require.NotNil(t, r)
			require.NotNil(t, r.IsEdns0())
			assert.Equal(t, uint16(1400), r.IsEdns0().UDPSize(), "tcp=%v", tcp)
		}
	})
}

// collidingPrefixes returns two IPv4 /24s whose keys share a slot of l.
func collidingPrefixes(t testing.TB, l *limiter) (netip.Addr, netip.Addr) {
	t.Helper()
	seen := map[uint64]netip.Addr{}
	for i := range 1 << 16 {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>8), byte(i), 7})
		slot := l.key(a) & l.mask
		if b, ok := seen[slot]; ok {
			return b, a
		}
		seen[slot] = a
	}
	t.Fatal("no colliding prefixes")
	return netip.Addr{}, netip.Addr{}
}

// TestRRLCollidingPrefixesShareBudget: two /24s that share a slot,
// queried alternately, are limited like one source (before, each took
// the slot over with a fresh budget, and neither was ever limited).
func TestRRLCollidingPrefixesShareBudget(t *testing.T) {
	rl := RateLimit{Rate: 0.001, Burst: 5, Slip: 2, TableSize: 256}
	count := func(w *worker, srcs ...netip.Addr) (answered, slipped, dropped int) {
		pkt := packQuery(t, "svc.example.test.", dns.TypeA, withEDNS(1232))
		for i := range 400 {
			out := w.respond(pkt, netip.AddrPortFrom(srcs[i%len(srcs)], 5353), false)
			switch {
			case out == nil:
				dropped++
			case out[4]&(flagTC>>8) != 0:
				slipped++
			default:
				answered++
			}
		}
		return
	}
	s, w := newUnstarted(t, Config{RateLimit: rl})
	a, b := collidingPrefixes(t, s.rrl)
	require.NotEqual(t, s.rrl.key(a), s.rrl.key(b), "two prefixes, one slot")
	ans, slip, drop := count(w, a, b)

	_, w1 := newUnstarted(t, Config{RateLimit: rl})
	ans1, slip1, drop1 := count(w1, a)
	assert.Equal(t, [3]int{5, 197, 198}, [3]int{ans1, slip1, drop1}, "one source: burst, then every 2nd slips")
	assert.Equal(t, [3]int{ans1, slip1, drop1}, [3]int{ans, slip, drop}, "two colliding sources: limited like one")
}

// TestRRLSlotsKeyedBySecret: the slot of a prefix depends on the secret,
// so collisions found for one process do not carry over to another.
func TestRRLSlotsKeyedBySecret(t *testing.T) {
	l1, err := newLimiter(RateLimit{Rate: 1, TableSize: 256})
	require.NoError(t, err)
	l2, err := newLimiter(RateLimit{Rate: 1, TableSize: 256})
	require.NoError(t, err)
	a, b := collidingPrefixes(t, l1)
	other := a.As4()
	other[3] = 200
	assert.Equal(t, l1.key(a), l1.key(netip.AddrFrom4(other)), "one /24, one key")
	same := 0
	for range 16 {
		l2.seed = maphash.MakeSeed()
		if l2.key(a)&l2.mask == l2.key(b)&l2.mask {
			same++
		}
	}
	assert.Less(t, same, 16, "another secret separates the pair (a chance of 1 in 256 each time)")
}

// TestRRLSlipKeepsOPT: a slipped (truncated) reply to an EDNS query still
// carries the OPT record.
func TestRRLSlipKeepsOPT(t *testing.T) {
	_, w := newUnstarted(t, Config{RateLimit: RateLimit{Rate: 0.001, Burst: 1, Slip: 1}})
	pkt := packQuery(t, "svc.example.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, true) })
	r := exchange(t, w, pkt, "192.0.2.1:5353", false)
	require.NotNil(t, r)
	require.False(t, r.Truncated)
	r = exchange(t, w, pkt, "192.0.2.1:5353", false)
	require.NotNil(t, r)
	assert.True(t, r.Truncated)
	assert.Empty(t, r.Answer)
	require.NotNil(t, r.IsEdns0(), "the slip keeps the OPT record")
	assert.True(t, r.IsEdns0().Do())
	assert.Equal(t, dns.RcodeSuccess, r.Rcode)
}

// TestSameAnswersAsKnot asks dnslb and a real Knot DNS the same questions
// for the same zone (Knot with svc as static A records) and compares the
// rcode, header flags, OPT and the answer and authority sections.
func TestSameAnswersAsKnot(t *testing.T) {
	knot := startKnot(t, "example.test.", cnameZone+
		"svc IN A 198.18.0.1\nsvc IN A 198.18.0.2\nip4-198-18-0-1.svc IN A 198.18.0.1\n")
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))
	_, addr := startServer(t, Config{
		Zones:    []Zone{{Origin: "example.test.", Records: cnameZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool, TTL: 300 * time.Second}},
	})
	classANY := func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }
	withDO := func(m *dns.Msg) { m.SetEdns0(1232, true) }
	tests := []struct {
		name  string
		qtype uint16
		opts  []func(*dns.Msg)
	}{
		{"svc", dns.TypeA, nil},
		{"cn", dns.TypeA, nil},
		{"cn2", dns.TypeA, nil},
		{"cncase", dns.TypeA, nil},
		{"cn", dns.TypeAAAA, nil},
		{"cn", dns.TypeTXT, nil},
		{"cn", dns.TypeCNAME, nil},
		{"txtcn", dns.TypeTXT, nil},
		{"dangling", dns.TypeA, nil},
		{"ext", dns.TypeA, nil},
		{"hostcn", dns.TypeA, nil},
		{"loop1", dns.TypeA, nil},
		{"svc", dns.TypeA, []func(*dns.Msg){classANY}},
		{"cn", dns.TypeA, []func(*dns.Msg){classANY}},
		{"txt", dns.TypeTXT, []func(*dns.Msg){classANY}},
		{"nope", dns.TypeA, []func(*dns.Msg){classANY}},
		{"cn", dns.TypeA, []func(*dns.Msg){withDO}},
		{"svc", 0, nil},
		{"svc", dns.TypeA, []func(*dns.Msg){func(m *dns.Msg) {
			m.Opcode = 3
			m.RecursionDesired, m.CheckingDisabled = true, true
		}}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%s", tc.name, dns.TypeToString[tc.qtype]), func(t *testing.T) {
			for _, netw := range []string{"udp", "tcp"} {
				want := ask(t, knot.addr, netw, tc.name+".example.test.", tc.qtype, tc.opts...)
				got := ask(t, addr, netw, tc.name+".example.test.", tc.qtype, tc.opts...)
				assert.Equal(t, dns.RcodeToString[want.Rcode], dns.RcodeToString[got.Rcode], netw)
				want.Id, got.Id = 0, 0
				assert.Equal(t, want.MsgHdr, got.MsgHdr, netw)
				assert.Equal(t, rrStrings(want.Answer), rrStrings(got.Answer), netw)
				assert.Equal(t, rrStrings(want.Ns), rrStrings(got.Ns), netw)
				wo, go_ := want.IsEdns0(), got.IsEdns0()
				require.Equal(t, wo != nil, go_ != nil, netw)
				if wo != nil {
					assert.Equal(t, wo.Do(), go_.Do(), netw)
					assert.Equal(t, wo.UDPSize(), go_.UDPSize(), netw)
				}
			}
		})
	}
}
