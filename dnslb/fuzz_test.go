package dnslb

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestServer returns a server (not listening) with one service per
// policy, "all", "weighted", "consistent", "nearest", and "big" (100
// backends, too many for a 512-byte answer).
func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	var small, big []balancer.Backend
	for i := range 4 {
		small = append(small, balancer.Backend{Addr: netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:80", i+1)),
			Weight: uint32(i + 1), Zone: []string{"ams", "nyc"}[i%2]})
	}
	small = append(small, balancer.Backend{Addr: netip.MustParseAddrPort("[2001:db8::1]:80"), Zone: "nyc"})
	for i := range 100 {
		big = append(big, be(fmt.Sprintf("198.18.1.%d:53", i+1)))
	}
	rules := []ZoneRule{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Zone: "ams"}, {Prefix: netip.MustParsePrefix("10.1.0.0/16"), Zone: "nyc"}}
	cfg.Zones = []Zone{{Origin: "example.test.", Records: testZone + "cnall IN CNAME all\ncnbig IN CNAME big\n"}}
	cfg.UpdateKeys = []TSIGKey{{Name: "lbkit", Secret: testKeySecret}}
	cfg.Logger = quiet
	cfg.Services = []Service{
		{Name: "all.example.test.", Pool: newPool(t, nil, small...), UpdatePort: 80},
		{Name: "weighted.example.test.", Pool: newPool(t, nil, small...), Policy: PolicyWeighted, Count: 2},
		{Name: "consistent.example.test.", Pool: newPool(t, ringhash.Builder{}, small...), Policy: PolicyConsistent},
		{Name: "nearest.example.test.", Pool: newPool(t, nil, small...), Policy: PolicyNearest, Zones: rules},
		{Name: "big.example.test.", Pool: newPool(t, nil, big...)},
	}
	s, err := New(cfg)
	require.NoError(t, err)
	return s
}

func packQuery(t testing.TB, name string, qtype uint16, opts ...func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	for _, o := range opts {
		o(m)
	}
	b, err := m.Pack()
	require.NoError(t, err)
	return b
}

// FuzzQuery feeds arbitrary bytes to the query path over UDP and TCP. It
// must never panic; a UDP response must never exceed what the query
// allowed (512 bytes without a valid OPT record, else the OPT's size
// capped by MaxUDPSize); every response must parse, be a response and
// carry the query's ID.
func FuzzQuery(f *testing.F) {
	s := newTestServer(f, Config{MaxUDPSize: 1400})
	for _, seed := range [][]byte{
		packQuery(f, "all.example.test.", dns.TypeA),
		packQuery(f, "big.example.test.", dns.TypeA),                      // truncated at 512
		packQuery(f, "big.example.test.", dns.TypeA, withEDNS(4096)),      // truncated at 1400
		packQuery(f, "big.example.test.", dns.TypeSRV, withEDNS(65535)),   // SRV + glue
		packQuery(f, "weighted.example.test.", dns.TypeAAAA, withEDNS(0)), // EDNS size below 512
		packQuery(f, "consistent.example.test.", dns.TypeA, withECS("203.0.113.0/24")),
		packQuery(f, "nearest.example.test.", dns.TypeA, withECS("2001:db8::/56")),
		packQuery(f, "nope.example.test.", dns.TypeANY),
		packQuery(f, "www.example.test.", dns.TypeA, withEDNS(1232)),     // CNAME to a name that does not exist
		packQuery(f, "cnall.example.test.", dns.TypeSRV, withEDNS(1232)), // CNAME to a service: SRV and glue
		packQuery(f, "cnbig.example.test.", dns.TypeA, withEDNS(1400)),   // CNAME to a truncated answer
		packQuery(f, "all.example.test.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }),
		packQuery(f, "example.org.", dns.TypeA),
		packQuery(f, "ip4-198-18-0-1.all.example.test.", dns.TypeA),
		signedUpdate(f, "all.example.test.", "198.18.0.77"),        // accepted: adds a backend
		{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xC0, 12, 0, 1, 0, 1}, // compression loop in the question
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		w := s.newWorker()
		allowed := 512
		var qm dns.Msg
		if qm.Unpack(pkt) == nil {
			if opt := qm.IsEdns0(); opt != nil {
				allowed = max(512, min(int(opt.UDPSize()), 1400))
			}
		}
		for _, tcp := range []bool{false, true} {
			out := w.respond(pkt, netip.MustParseAddrPort("192.0.2.1:5353"), tcp)
			if out == nil {
				continue
			}
			msg := out[2:]
			if !tcp {
				require.LessOrEqual(t, len(msg), allowed, "UDP response larger than the client allowed")
			}
			var r dns.Msg
			require.NoError(t, r.Unpack(msg), "response must parse")
			require.True(t, r.Response)
			require.Equal(t, uint16(pkt[0])<<8|uint16(pkt[1]), r.Id)
		}
	})
}

func TestQueryPathRegressions(t *testing.T) {
	s := newTestServer(t, Config{})
	w := s.newWorker()
	tests := []struct {
		name  string
		pkt   []byte
		rcode int
	}{
		{"compression pointer in question", []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xC0, 12, 0, 1, 0, 1}, dns.RcodeFormatError},
		{"label past the end", []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 'a'}, dns.RcodeFormatError},
		{"ECS address longer than prefix", func() []byte {
			m := new(dns.Msg)
			m.SetQuestion("all.example.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: 8, Data: []byte{0, 1, 8, 0, 10, 0}}}
			b, _ := m.Pack()
			return b
		}(), dns.RcodeFormatError},
		{"ECS bits beyond prefix", func() []byte {
			m := new(dns.Msg)
			m.SetQuestion("all.example.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: 8, Data: []byte{0, 1, 7, 0, 11}}}
			b, _ := m.Pack()
			return b
		}(), dns.RcodeFormatError},
		{"two OPT records", func() []byte {
			m := new(dns.Msg)
			m.SetQuestion("all.example.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.Extra = append(m.Extra, m.Extra[0])
			b, _ := m.Pack()
			return b
		}(), dns.RcodeFormatError},
		{"unknown EDNS option ignored", func() []byte {
			m := new(dns.Msg)
			m.SetQuestion("all.example.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}}}
			b, _ := m.Pack()
			return b
		}(), dns.RcodeSuccess},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := w.respond(tc.pkt, netip.MustParseAddrPort("192.0.2.1:5353"), false)
			require.NotNil(t, out)
			var r dns.Msg
			require.NoError(t, r.Unpack(out[2:]))
			assert.Equal(t, dns.RcodeToString[tc.rcode], dns.RcodeToString[r.Rcode])
		})
	}
}

// TestServeNoAllocs holds the answer path to zero allocations per query
// for every policy, negative answers and truncation.
func TestServeNoAllocs(t *testing.T) {
	s := newTestServer(t, Config{RateLimit: RateLimit{Rate: 1e9}})
	w := s.newWorker()
	src := netip.MustParseAddrPort("192.0.2.1:5353")
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"all", packQuery(t, "all.example.test.", dns.TypeA)},
		{"weighted", packQuery(t, "weighted.example.test.", dns.TypeA)},
		{"consistent+ECS", packQuery(t, "consistent.example.test.", dns.TypeA, withECS("203.0.113.0/24"))},
		{"nearest+ECS", packQuery(t, "nearest.example.test.", dns.TypeA, withECS("10.1.2.0/24"))},
		{"AAAA", packQuery(t, "all.example.test.", dns.TypeAAAA)},
		{"SRV", packQuery(t, "all.example.test.", dns.TypeSRV, withEDNS(4096))},
		{"NXDOMAIN", packQuery(t, "nope.example.test.", dns.TypeA)},
		{"truncated", packQuery(t, "big.example.test.", dns.TypeA)},
		{"static", packQuery(t, "example.test.", dns.TypeSOA)},
		{"CNAME chain", packQuery(t, "www.example.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, true) })},
		{"CNAME to a service", packQuery(t, "cnall.example.test.", dns.TypeA)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NotNil(t, w.respond(tc.pkt, src, false))
			allocs := testing.AllocsPerRun(100, func() { w.respond(tc.pkt, src, false) })
			assert.Zero(t, allocs)
		})
	}
}

func BenchmarkServeDNS(b *testing.B) {
	s := newTestServer(b, Config{})
	src := netip.MustParseAddrPort("192.0.2.1:5353")
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"all", packQuery(b, "all.example.test.", dns.TypeA)},
		{"weighted", packQuery(b, "weighted.example.test.", dns.TypeA)},
		{"consistent", packQuery(b, "consistent.example.test.", dns.TypeA, withECS("203.0.113.0/24"))},
		{"nearest", packQuery(b, "nearest.example.test.", dns.TypeA, withECS("10.1.2.0/24"))},
		{"nxdomain", packQuery(b, "nope.example.test.", dns.TypeA)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w := s.newWorker()
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.pkt)))
			for b.Loop() {
				w.respond(tc.pkt, src, false)
			}
		})
	}
	// The miekg/dns baseline: unpack, build and pack a dns.Msg per query.
	b.Run("miekg-baseline", func(b *testing.B) {
		pkt := packQuery(b, "all.example.test.", dns.TypeA)
		rrs := make([]dns.RR, 4)
		for i := range rrs {
			rrs[i], _ = dns.NewRR(fmt.Sprintf("all.example.test. 30 IN A 198.18.0.%d", i+1))
		}
		buf := make([]byte, 512)
		b.ReportAllocs()
		for b.Loop() {
			var q dns.Msg
			if q.Unpack(pkt) != nil {
				b.Fatal("unpack")
			}
			r := new(dns.Msg)
			r.SetReply(&q)
			r.Authoritative = true
			r.Answer = append(r.Answer, rrs...)
			if _, err := r.PackBuffer(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// signedUpdate packs an UPDATE adding addr at name, signed with the test key.
func signedUpdate(t testing.TB, name, addr string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetUpdate("example.test.")
	m.Insert([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
		A: netip.MustParseAddr(addr).AsSlice()}})
	m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
	b, _, err := dns.TsigGenerate(m, testKeySecret, "", false)
	require.NoError(t, err)
	return b
}

// FuzzSignedQuery feeds arbitrary bytes to a signed zone with wildcards
// and delegations: no panic, and every response parses, is a response
// with the query's ID, and over UDP fits what the query allowed.
func FuzzSignedQuery(f *testing.F) {
	k, err := GenerateKey("example.test.", dns.ED25519)
	require.NoError(f, err)
	s, err := New(Config{
		Zones:    []Zone{{Origin: "example.test.", Records: cutZone + "cnsub IN CNAME www.sub\n", Keys: []SigningKey{k}}},
		Services: []Service{{Name: "svc.example.test.", Pool: newPool(f, nil, be("198.18.0.1:80"), be("[2001:db8::1]:80"))}},
		Logger:   quiet,
	})
	require.NoError(f, err)
	for _, seed := range [][]byte{
		packQuery(f, "svc.example.test.", dns.TypeA, withDO),
		packQuery(f, "a.b.wild.example.test.", dns.TypeTXT, withDO),
		packQuery(f, "x.cnw.example.test.", dns.TypeA, withDO),
		packQuery(f, "www.secure.example.test.", dns.TypeA, withDO),
		packQuery(f, "cnsub.example.test.", dns.TypeA, withDO),
		packQuery(f, "sub.example.test.", dns.TypeDS, withDO),
		packQuery(f, "nope.example.test.", dns.TypeANY, withDO),
		packQuery(f, "ip6-20010db8000000000000000000000001.svc.example.test.", dns.TypeA, withDO),
		packQuery(f, "*.wild.example.test.", dns.TypeA, withDO),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		w := s.newWorker()
		allowed := 512
		var qm dns.Msg
		if qm.Unpack(pkt) == nil {
			if opt := qm.IsEdns0(); opt != nil {
				allowed = max(512, min(int(opt.UDPSize()), DefaultMaxUDPSize))
			}
		}
		for _, tcp := range []bool{false, true} {
			out := w.respond(pkt, netip.MustParseAddrPort("192.0.2.1:5353"), tcp)
			if out == nil {
				continue
			}
			msg := out[2:]
			if !tcp {
				require.LessOrEqual(t, len(msg), allowed, "UDP response larger than the client allowed")
			}
			var r dns.Msg
			require.NoError(t, r.Unpack(msg), "response must parse")
			require.True(t, r.Response)
			require.Equal(t, uint16(pkt[0])<<8|uint16(pkt[1]), r.Id)
		}
	})
}
