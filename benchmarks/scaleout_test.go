package benchmarks

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/rendezvous"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/sourcehash"
)

// Scale-out: several balancer nodes, each with its own pool of the same
// members (listed in a different order, as each node's discovery returns
// them), share no state. A hash policy lets them agree anyway: the same
// key picks the same backend on every node, so a flow that a router moves
// from one node to another keeps its backend. The kernel data planes are
// checked the same way in internal/ecmplab; these are the Go pickers.
const (
	scaleNodes    = 3
	scaleBackends = 10
	scaleKeys     = 100_000
)

// scalePolicies are the hash policies, which must agree across nodes.
var scalePolicies = []struct {
	name    string
	builder balancer.Builder
}{
	{"maglev", maglev.Builder{}},
	{"ringhash", ringhash.Builder{}},
	{"rendezvous", rendezvous.Builder{}},
	{"sourcehash", sourcehash.Builder{}},
	{"sourcehash-map", sourcehash.Builder{HashType: sourcehash.MapBased}},
}

// scaleMembers returns n backends 198.18.2.1:80, .2, ...
func scaleMembers(n int) []balancer.Backend {
	out := make([]balancer.Backend, n)
	for i := range out {
		out[i] = balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(1 + i)}), 80)}
	}
	return out
}

// scaleFleet returns one pool per node, each holding members shuffled
// with the node's own seed (never reordering the caller's slice).
func scaleFleet(t testing.TB, b balancer.Builder, members []balancer.Backend) []*balancer.Pool {
	t.Helper()
	pools := make([]*balancer.Pool, scaleNodes)
	for i := range pools {
		order := append([]balancer.Backend(nil), members...)
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		p, err := balancer.New(balancer.Config{Builder: b})
		require.NoError(t, err)
		require.NoError(t, p.Set(order))
		t.Cleanup(func() { p.Close() })
		pools[i] = p
	}
	return pools
}

// scaleKey returns the i-th flow key: a client flow's 5-tuple hash, as
// l2lb and tcpproxy key their picks.
func scaleKey(i int) uint64 {
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i%4)}), uint16(20000+i/4))
	return balancer.HashFlow(6, src, netip.MustParseAddrPort("198.18.100.1:80"))
}

type scaleResult struct {
	disagree int     // keys on which some node picks another backend than node 1
	moved    float64 // share of keys whose backend changes when one backend joins, as a multiple of the ideal 1/(N+1)
}

// scaleRun counts the keys the nodes disagree on, then adds a backend to
// every node and counts the keys that moved on node 1.
func scaleRun(t testing.TB, b balancer.Builder) scaleResult {
	t.Helper()
	members := scaleMembers(scaleBackends + 1)
	pools := scaleFleet(t, b, members[:scaleBackends])
	var r scaleResult
	before := make([]netip.AddrPort, scaleKeys)
	for k := range scaleKeys {
		info := balancer.WithKey(scaleKey(k))
		for n, p := range pools {
			e, err := p.Pick(info)
			require.NoError(t, err)
			if n == 0 {
				before[k] = e.Addr()
			} else if e.Addr() != before[k] {
				r.disagree++
				break
			}
		}
	}
	require.NoError(t, pools[0].Add(members[scaleBackends]))
	moved := 0
	for k := range scaleKeys {
		e, err := pools[0].Pick(balancer.WithKey(scaleKey(k)))
		require.NoError(t, err)
		if e.Addr() != before[k] {
			moved++
		}
	}
	r.moved = float64(moved) / scaleKeys * (scaleBackends + 1)
	return r
}

// TestScaleOutAgreement checks that nodes with the same members in
// different orders pick alike for every key, for each hash policy, and
// logs how many keys move when a backend joins (the keys on which nodes
// disagree while the change reaches them one by one).
func TestScaleOutAgreement(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "%d nodes, %d backends listed in a different order on each, %d flow keys:\n", scaleNodes, scaleBackends, scaleKeys)
	fmt.Fprintf(&b, "| policy | keys the nodes disagree on | keys moved when an 11th backend joins (× ideal 1/11) |\n|---|---|---|\n")
	for _, p := range scalePolicies {
		r := scaleRun(t, p.builder)
		fmt.Fprintf(&b, "| %s | %d | %.2f |\n", p.name, r.disagree, r.moved)
		require.Zero(t, r.disagree, "%s: nodes disagree", p.name)
	}
	t.Log(b.String())
}

// BenchmarkScaleOut reports, per hash policy, the keys on which nodes
// disagree ("disagree") and the keys moved by a joining backend as a
// multiple of the ideal ("moved/ideal"); the time is that of one run.
func BenchmarkScaleOut(b *testing.B) {
	for _, p := range scalePolicies {
		b.Run(p.name, func(b *testing.B) {
			var r scaleResult
			for b.Loop() {
				r = scaleRun(b, p.builder)
			}
			b.ReportMetric(float64(r.disagree), "disagree")
			b.ReportMetric(r.moved, "moved/ideal")
		})
	}
}
