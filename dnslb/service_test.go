package dnslb

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestJump(t *testing.T) {
	const keys = 20000
	counts := make([]int, 10)
	for k := range uint64(keys) {
		key := balancer.Mix64(k)
		b := jump(key, 10)
		counts[b]++
		// Growing to 11 buckets moves a key only to the new bucket.
		if b11 := jump(key, 11); b11 != b {
			assert.Equal(t, 10, b11)
		}
	}
	for i, c := range counts {
		assert.InDelta(t, keys/10, c, keys/10*0.1, "bucket %d", i)
	}
	assert.Equal(t, 0, jump(42, 1))
}

func TestPolicyString(t *testing.T) {
	assert.Equal(t, []string{"all", "weighted", "consistent", "nearest", "Policy(9)"},
		[]string{PolicyAll.String(), PolicyWeighted.String(), PolicyConsistent.String(), PolicyNearest.String(), Policy(9).String()})
	assert.Equal(t, []string{"all", "servfail", "Fallback(7)"}, []string{FallbackAll.String(), FallbackServFail.String(), Fallback(7).String()})
}

// TestEnumsText: Policy and Fallback read and write the names a
// configuration file uses, and reject others.
func TestEnumsText(t *testing.T) {
	type svc struct {
		Policy   Policy
		Fallback Fallback
	}
	for _, p := range []Policy{PolicyAll, PolicyWeighted, PolicyConsistent, PolicyNearest} {
		for _, f := range []Fallback{FallbackAll, FallbackServFail} {
			b, err := json.Marshal(svc{p, f})
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf(`{"Policy":%q,"Fallback":%q}`, p, f), string(b))
			var back svc
			require.NoError(t, json.Unmarshal(b, &back))
			assert.Equal(t, svc{p, f}, back)
		}
	}
	var got svc
	require.NoError(t, json.Unmarshal([]byte(`{"Policy":"Consistent","Fallback":"SERVFAIL"}`), &got))
	assert.Equal(t, svc{PolicyConsistent, FallbackServFail}, got, "case is ignored")
	err := json.Unmarshal([]byte(`{"Policy":"nearest-zone"}`), &got)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "dnslb: unknown policy")
	require.Error(t, json.Unmarshal([]byte(`{"Fallback":"none"}`), &got))
	_, err = Policy(9).MarshalText()
	assert.Error(t, err)
	_, err = Fallback(7).MarshalText()
	assert.Error(t, err)
}

// TestConsistentMixedFamilies: the pool's picker chooses among both
// families; an AAAA answer for a key whose pick is an IPv4 backend falls
// back to a jump hash over the IPv6 records, still stable per subnet.
func TestConsistentMixedFamilies(t *testing.T) {
	pool := newPool(t, ringhash.Builder{},
		be("198.18.0.1:80"), be("198.18.0.2:80"), be("198.18.0.3:80"),
		be("[2001:db8::1]:80"), be("[2001:db8::2]:80"))
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool, Policy: PolicyConsistent}}})
	require.NoError(t, err)
	w := s.newWorker()
	seen := map[string]bool{}
	for i := range 64 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i), 9}), 5353)
		pkt := packQuery(t, "svc.example.test.", dns.TypeAAAA)
		var first string
		for range 3 {
			out := w.respond(pkt, src, false)
			var r dns.Msg
			require.NoError(t, r.Unpack(out[2:]))
			got := addrs(&r)
			require.Len(t, got, 1)
			if first == "" {
				first = got[0]
			}
			assert.Equal(t, first, got[0], "stable for one subnet")
		}
		seen[first] = true
	}
	assert.Len(t, seen, 2, "both IPv6 backends serve some subnets")
}

// TestFallbackFollowsMembership: with nothing ready the answer lists the
// members; draining or removing one that is not ready leaves the ready set
// empty, yet the pool publishes a snapshot and the answer follows at once.
func TestFallbackFollowsMembership(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2 := netip.MustParseAddrPort("198.18.0.1:80"), netip.MustParseAddrPort("198.18.0.2:80")
		pool := balancer.MustNew(balancer.Config{Builder: ringhash.Builder{}})
		defer pool.Close()
		require.NoError(t, pool.Set([]balancer.Backend{be(a1.String()), be(a2.String())}))
		s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
			Services: []Service{{Name: "svc.example.test.", Pool: pool}}})
		require.NoError(t, err)
		w := s.newWorker()
		pkt := packQuery(t, "svc.example.test.", dns.TypeA)
		answer := func() []string {
			var r dns.Msg
			require.NoError(t, r.Unpack(w.respond(pkt, netip.MustParseAddrPort("192.0.2.1:53"), false)[2:]))
			return sorted(addrs(&r))
		}
		pool.SetHealthy(a1, false)
		pool.SetHealthy(a2, false)
		assert.Equal(t, []string{"198.18.0.1", "198.18.0.2"}, answer(), "panic: every member")
		v := pool.Snapshot().Version
		pool.SetDraining(a1, true)
		require.Equal(t, v+1, pool.Snapshot().Version, "a member change publishes a snapshot")
		assert.Equal(t, []string{"198.18.0.2"}, answer(), "the draining member left the answer")
		pool.Remove(a2)
		pool.SetDraining(a1, false)
		assert.Equal(t, []string{"198.18.0.1"}, answer(), "the removed member left the answer")
	})
}

// lastBuilder picks the last ready endpoint whatever the key: a policy
// no built-in answer logic would come up with.
type lastBuilder struct{}

func (lastBuilder) Build(ready []balancer.Weighted) balancer.Picker {
	last := ready[len(ready)-1].Endpoint
	return balancer.PickerFunc(func(balancer.PickInfo) (*balancer.Endpoint, error) { return last, nil })
}

// TestPoolPolicyDecides: weighted and consistent answers name whom the
// pool's picker picks; when it keeps picking one backend, a second name
// comes from the rest.
func TestPoolPolicyDecides(t *testing.T) {
	backends := []balancer.Backend{be("198.18.0.1:80"), be("198.18.0.2:80"), be("198.18.0.3:80")}
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}}, Services: []Service{
		{Name: "w.example.test.", Pool: newPool(t, lastBuilder{}, backends...), Policy: PolicyWeighted},
		{Name: "c.example.test.", Pool: newPool(t, lastBuilder{}, backends...), Policy: PolicyConsistent},
		{Name: "w2.example.test.", Pool: newPool(t, lastBuilder{}, backends...), Policy: PolicyWeighted, Count: 2},
	}})
	require.NoError(t, err)
	w := s.newWorker()
	for i := range 20 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i), 1}), 53)
		for _, name := range []string{"w", "c"} {
			r := exchange(t, w, packQuery(t, name+".example.test.", dns.TypeA), src.String(), false)
			assert.Equal(t, []string{"198.18.0.3"}, addrs(r), name)
		}
		r := exchange(t, w, packQuery(t, "w2.example.test.", dns.TypeA), src.String(), false)
		got := addrs(r)
		require.Len(t, got, 2)
		assert.Equal(t, "198.18.0.3", got[0])
		assert.NotEqual(t, got[0], got[1])
	}
}

// TestConsistentKeyPrefix: Service.Key's prefix length decides which
// clients share an answer and the ECS scope.
func TestConsistentKeyPrefix(t *testing.T) {
	var backends []balancer.Backend
	for i := 1; i <= 8; i++ {
		backends = append(backends, be(fmt.Sprintf("198.18.0.%d:80", i)))
	}
	pool := newPool(t, maglev.Builder{}, backends...)
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}}, Services: []Service{
		{Name: "c16.example.test.", Pool: pool, Policy: PolicyConsistent, Key: balancer.MustParseKey("client/16,48")},
		{Name: "c.example.test.", Pool: pool, Policy: PolicyConsistent},
	}})
	require.NoError(t, err)
	w := s.newWorker()
	answer := func(name, ecs string) ([]string, uint8) {
		r := exchange(t, w, packQuery(t, name, dns.TypeA, withECS(ecs)), "192.0.2.1:53", false)
		scope, ok := ecsScope(t, r)
		require.True(t, ok)
		return addrs(r), scope
	}
	spread16, spread24 := map[string]bool{}, map[string]bool{}
	for i := range 64 {
		first, scope := answer("c16.example.test.", fmt.Sprintf("10.%d.0.0/24", i))
		assert.Equal(t, uint8(16), scope)
		for j := 1; j < 4; j++ {
			got, _ := answer("c16.example.test.", fmt.Sprintf("10.%d.%d.0/24", i, j*50))
			assert.Equal(t, first, got, "one /16, one answer")
		}
		spread16[first[0]] = true
		got, scope := answer("c.example.test.", fmt.Sprintf("10.0.%d.0/24", i))
		assert.Equal(t, uint8(24), scope, "DefaultKey: the /24")
		spread24[got[0]] = true
		want := pool.Snapshot().Picker
		ep, err := want.Pick(DefaultKey.Client(netip.MustParseAddr(fmt.Sprintf("10.0.%d.0", i))))
		require.NoError(t, err)
		assert.Equal(t, ep.Addr().Addr().String(), got[0], "the pool's Maglev pick for the key")
	}
	assert.Greater(t, len(spread16), 4)
	assert.Greater(t, len(spread24), 4)
}

// TestSRVTargetFromMeta: a member's MetaName is its SRV target, without
// glue; members without it keep the synthesized target.
func TestSRVTargetFromMeta(t *testing.T) {
	pool := newPool(t, nil,
		balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.1:8080"), Meta: map[string]string{MetaName: "web1.example.test"}},
		be("198.18.0.2:8080"))
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}},
		Services: []Service{{Name: "_http._tcp.example.test.", Pool: pool}}})
	require.NoError(t, err)
	w := s.newWorker()
	r := exchange(t, w, packQuery(t, "_http._tcp.example.test.", dns.TypeSRV, withEDNS(1232)), "192.0.2.1:53", false)
	var targets []string
	for _, rr := range r.Answer {
		targets = append(targets, rr.(*dns.SRV).Target)
	}
	assert.ElementsMatch(t, []string{"web1.example.test.", "ip4-198-18-0-2._http._tcp.example.test."}, targets)
	assert.Equal(t, []string{"ip4-198-18-0-2._http._tcp.example.test.\t30\tin\ta\t198.18.0.2"}, rrStrings(r.Extra), "glue for the synthesized target only")

	require.NoError(t, pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.1:8080"), Meta: map[string]string{MetaName: "web9.example.test."}},
		be("198.18.0.2:8080")}))
	r = exchange(t, w, packQuery(t, "_http._tcp.example.test.", dns.TypeSRV, withEDNS(1232)), "192.0.2.1:53", false)
	targets = targets[:0]
	for _, rr := range r.Answer {
		targets = append(targets, rr.(*dns.SRV).Target)
	}
	assert.Contains(t, targets, "web9.example.test.", "a meta change in the pool reaches the answer")
}
