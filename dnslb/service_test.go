package dnslb

import (
	"net/netip"
	"testing"
	"testing/synctest"

	"github.com/lbkit/lbkit/balancer"
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
