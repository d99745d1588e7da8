package rendezvous_test

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/rendezvous"
)

func TestBuildInvalidWeight(t *testing.T) {
	for _, w := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		t.Run(fmt.Sprint(w), func(t *testing.T) {
			ready := balancertest.Ready(3)
			ready[1].Weight = w
			_, err := rendezvous.Builder{}.Build(ready).Pick(balancer.WithKey(1))
			require.ErrorIs(t, err, balancer.ErrNoBackend)
			assert.Regexp(t, "^rendezvous: ", err.Error())
		})
	}
}

func TestPickDistribution(t *testing.T) {
	// The logarithmic method is exact in expectation, so the tolerance
	// only covers sampling noise (200k picks: under 1% for these shares).
	tests := []struct {
		name    string
		weights []float64
		info    func(int) balancer.PickInfo
		tol     float64
	}{
		{"keyed equal", []float64{1, 1, 1}, balancertest.RandomKeys(1), 0.02},
		{"keyed weighted", []float64{1, 2, 5}, balancertest.RandomKeys(2), 0.03},
		{"keyless weighted", []float64{1, 2, 5}, nil, 0.03},
		{"keyed slow start", []float64{0.1, 1, 1, 1}, balancertest.RandomKeys(3), 0.05},
		{"keyed many groups", []float64{0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4}, balancertest.RandomKeys(4), 0.05},
		{"keyless slow start", []float64{0.1, 1, 1, 1}, nil, 0.05},
		{"keyed 100", slices.Repeat([]float64{1}, 100), balancertest.RandomKeys(5), 0.15},
		{"small keys", []float64{1, 1, 1, 1}, func(i int) balancer.PickInfo { return balancer.WithKey(uint64(i)) }, 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(tt.weights...)
			p := rendezvous.Builder{}.Build(ready)
			counts := balancertest.Counts(t, p, 200000, tt.info)
			balancertest.CheckDistribution(t, ready, counts, tt.tol)
		})
	}
}

func TestKeylessPickBoundaries(t *testing.T) {
	// A single endpoint, and tiny weights next to large ones, never
	// index past the end.
	for _, ws := range [][]float64{{1}, {1e-9, 1e9}, {1e9, 1e-9}} {
		ready := balancertest.ReadyWeights(ws...)
		p := rendezvous.Builder{}.Build(ready)
		counts := balancertest.Counts(t, p, 1000, nil)
		total := 0
		for _, c := range counts {
			total += c
		}
		assert.Equal(t, 1000, total)
	}
}

func TestPickDeterministic(t *testing.T) {
	balancertest.CheckDeterministic(t, rendezvous.Builder{}, balancertest.RandomKeys(3), 1, 2, 1, 3, 1, 0.5, 1, 2)
}

func TestDisruption(t *testing.T) {
	for _, n := range []int{3, 10, 100, 1000} {
		t.Run(fmt.Sprintf("remove one of %d", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			gone := ready[n/2].Endpoint.Addr()
			before := rendezvous.Builder{}.Build(ready)
			after := rendezvous.Builder{}.Build(balancertest.Without(ready, n/2))
			keys := balancertest.RandomKeys(1)
			picks := 50000
			if n == 1000 {
				picks = 10000 // O(n) picks; the strict check above is what counts
			}
			moved := 0
			for i := range picks {
				a, _ := before.Pick(keys(i))
				b, _ := after.Pick(keys(i))
				if a.Addr() != b.Addr() {
					require.Equal(t, gone, a.Addr(), "key %d moved from a remaining endpoint", i)
					moved++
				}
			}
			ratio := float64(moved) / float64(picks) * float64(n)
			t.Logf("disruption %.5f, ideal %.5f: %.3f×", float64(moved)/float64(picks), 1/float64(n), ratio)
			if n <= 100 {
				assert.InDelta(t, 1, ratio, 0.15)
			}
		})
	}
	t.Run("add one to 10", func(t *testing.T) {
		ready := balancertest.Ready(11)
		before := rendezvous.Builder{}.Build(ready[:10])
		after := rendezvous.Builder{}.Build(ready)
		keys := balancertest.RandomKeys(2)
		for i := range 20000 {
			a, _ := before.Pick(keys(i))
			b, _ := after.Pick(keys(i))
			if a != b {
				require.Same(t, ready[10].Endpoint, b, "key %d moved between old endpoints", i)
			}
		}
		d := balancertest.Disruption(t, before, after, 100000)
		assert.InDelta(t, 1.0/11, d, 0.01)
	})
	t.Run("reweight moves keys only to or from the reweighted", func(t *testing.T) {
		ready := balancertest.Ready(5)
		before := rendezvous.Builder{}.Build(ready)
		heavier := slices.Clone(ready)
		heavier[2].Weight = 3
		after := rendezvous.Builder{}.Build(heavier)
		keys := balancertest.RandomKeys(3)
		for i := range 20000 {
			a, _ := before.Pick(keys(i))
			b, _ := after.Pick(keys(i))
			if a != b {
				require.Same(t, ready[2].Endpoint, b, "key %d", i)
			}
		}
	})
}

// With Builder.Rand set, keyless picks are reproducible: the same seed
// gives the same picks, another seed other picks.
func TestSeededKeylessPicks(t *testing.T) {
	balancertest.CheckSeeded(t, func(src mrand.Source) balancer.Builder { return rendezvous.Builder{Rand: src} })
}

func TestBuildEmpty(t *testing.T) { balancertest.CheckEmpty(t, rendezvous.Builder{}) }

func TestPickNoAllocs(t *testing.T) {
	for _, n := range []int{1, 3, 100, 1000} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			if n > 1 {
				ready[0].Weight = 0.3 // two weight groups
			}
			p := rendezvous.Builder{}.Build(ready)
			balancertest.CheckNoAllocs(t, p, balancer.WithKey(0xfeedface))
			balancertest.CheckNoAllocs(t, p, balancer.PickInfo{})
		})
	}
}

func TestPickConcurrentWithUpdates(t *testing.T) {
	balancertest.CheckConcurrentWithUpdates(t, rendezvous.Builder{})
}

// TestSlowStart shows a pool's slow start working through this hash
// policy: a recovered backend's share of keys ramps up over the window.
func TestSlowStart(t *testing.T) {
	balancertest.CheckSlowStart(t, rendezvous.Builder{}, balancertest.RandomKeys(11), 0.015, 0)
}

func ExampleBuilder() {
	var ready []balancer.Weighted
	for i, w := range []float64{1, 1, 2} {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 53)
		ready = append(ready, balancer.Weighted{Endpoint: balancer.NewEndpoint(balancer.Backend{Addr: addr}), Weight: w})
	}
	p := rendezvous.Builder{}.Build(ready)

	// Count where 8000 distinct clients go: about 1:1:2.
	counts := map[netip.AddrPort]int{}
	for c := range 8000 {
		ep, _ := p.Pick(balancer.WithKey(balancer.Mix64(uint64(c))))
		counts[ep.Addr()]++
	}
	for _, r := range ready {
		share := float64(counts[r.Endpoint.Addr()]) / 8000
		fmt.Printf("%v weight %g: %.1f\n", r.Endpoint.Addr(), r.Weight, share*4)
	}
	// Output:
	// 198.18.0.10:53 weight 1: 1.0
	// 198.18.0.11:53 weight 1: 1.0
	// 198.18.0.12:53 weight 2: 2.0
}

var (
	epSink  *balancer.Endpoint
	errSink error
)

func BenchmarkBuild(b *testing.B) { balancertest.BenchmarkBuild(b, rendezvous.Builder{}) }

func BenchmarkPick(b *testing.B) {
	for _, tc := range []struct {
		name      string
		slowStart bool
	}{{"", false}, {"slowstart/", true}} {
		for _, n := range []int{3, 100, 1000} {
			b.Run(fmt.Sprintf("%sn=%d", tc.name, n), func(b *testing.B) {
				ready := balancertest.Ready(n)
				if tc.slowStart {
					ready[0].Weight = 0.3
				}
				p := rendezvous.Builder{}.Build(ready)
				b.ReportAllocs()
				k := uint64(0)
				for b.Loop() {
					k += 0x9e3779b97f4a7c15
					epSink, errSink = p.Pick(balancer.WithKey(k))
				}
			})
		}
	}
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprintf("keyless/n=%d", n), func(b *testing.B) {
			p := rendezvous.Builder{}.Build(balancertest.Ready(n))
			b.ReportAllocs()
			for b.Loop() {
				epSink, errSink = p.Pick(balancer.PickInfo{})
			}
		})
	}
}

// BenchmarkPickParallel measures keyed picks from GOMAXPROCS goroutines.
func BenchmarkPickParallel(b *testing.B) {
	balancertest.BenchmarkPickKeyed(b, rendezvous.Builder{}, true)
}
