package ringhash_test

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/ringhash"
)

func build(t testing.TB, b ringhash.Builder, ready []balancer.Weighted) *ringhash.Picker {
	t.Helper()
	p, ok := b.Build(ready).(*ringhash.Picker)
	require.True(t, ok, "Build failed")
	return p
}

func TestBuildInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		b    ringhash.Builder
	}{
		{"negative min", ringhash.Builder{MinRingSize: -1}},
		{"negative max", ringhash.Builder{MaxRingSize: -1}},
		{"min above max", ringhash.Builder{MinRingSize: 100, MaxRingSize: 10}},
		{"negative points", ringhash.Builder{PointsPerWeight: -1}},
		{"NaN points", ringhash.Builder{PointsPerWeight: math.NaN()}},
		{"negative epsilon", ringhash.Builder{Epsilon: -0.1}},
		{"NaN epsilon", ringhash.Builder{Epsilon: math.NaN()}},
		{"infinite epsilon", ringhash.Builder{Epsilon: math.Inf(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.b.Build(balancertest.Ready(3))
			_, err := p.Pick(balancer.WithKey(1))
			require.ErrorIs(t, err, balancer.ErrNoBackend)
			assert.ErrorIs(t, err, ringhash.ErrConfig)
			assert.Contains(t, err.Error(), "ringhash: ")
		})
	}
}

func TestRingSize(t *testing.T) {
	tests := []struct {
		name     string
		b        ringhash.Builder
		weights  []float64
		min, max int
	}{
		{"default", ringhash.Builder{}, []float64{1, 1, 1, 1}, 640, 640},
		{"default weighted", ringhash.Builder{}, []float64{1, 2.5, 0.1}, 576, 576},
		{"per weight", ringhash.Builder{PointsPerWeight: 1000}, []float64{1, 2}, 3000, 3000},
		{"min", ringhash.Builder{MinRingSize: 4096}, []float64{1, 1, 1, 1}, 4096, 4096},
		{"min below default", ringhash.Builder{MinRingSize: 100}, []float64{1, 1, 1, 1}, 640, 640},
		{"lightest gets its share of min", ringhash.Builder{MinRingSize: 10000}, []float64{1, 3}, 10000, 10000},
		{"slow start grows the ring", ringhash.Builder{MinRingSize: 10000}, []float64{0.1, 1, 1, 1}, 10000, 10500},
		{"max caps, one point each at least", ringhash.Builder{MaxRingSize: 64}, []float64{1, 1000}, 2, 65},
		{"one endpoint", ringhash.Builder{MinRingSize: 1, MaxRingSize: 1}, []float64{1}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := build(t, tt.b, balancertest.ReadyWeights(tt.weights...))
			assert.GreaterOrEqual(t, p.RingSize(), tt.min)
			assert.LessOrEqual(t, p.RingSize(), tt.max)
			ep, err := p.Pick(balancer.WithKey(42))
			require.NoError(t, err)
			assert.NotNil(t, ep)
		})
	}
}

func TestPickDistribution(t *testing.T) {
	// An endpoint with k points gets its share within about 1/√k, so the
	// tolerance follows the ring size. Keys are deterministic, so these
	// cannot flake.
	tests := []struct {
		name    string
		b       ringhash.Builder
		weights []float64
		info    func(int) balancer.PickInfo
		tol     float64
	}{
		{"default equal", ringhash.Builder{}, []float64{1, 1, 1}, balancertest.RandomKeys(1), 0.08},
		{"default weighted", ringhash.Builder{}, []float64{1, 2, 5}, balancertest.RandomKeys(2), 0.1},
		{"default keyless", ringhash.Builder{}, []float64{1, 2, 5}, nil, 0.1},
		{"default 100", ringhash.Builder{}, slices.Repeat([]float64{1}, 100), balancertest.RandomKeys(3), 0.3},
		{"big ring weighted", ringhash.Builder{MinRingSize: 1 << 16}, []float64{1, 2, 5}, balancertest.RandomKeys(4), 0.03},
		{"big ring slow start", ringhash.Builder{MinRingSize: 1 << 16}, []float64{0.1, 1, 1, 1}, balancertest.RandomKeys(5), 0.05},
		{"bounded idle equals plain", ringhash.Builder{Epsilon: 0.25}, []float64{1, 2, 5}, balancertest.RandomKeys(2), 0.1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(tt.weights...)
			p := build(t, tt.b, ready)
			counts := balancertest.Counts(t, p, 200000, tt.info)
			balancertest.CheckDistribution(t, ready, counts, tt.tol)
		})
	}
}

func TestSmallKeysSpread(t *testing.T) {
	// Keys 0, 1, 2, ... are mixed before they are placed.
	ready := balancertest.Ready(4)
	p := build(t, ringhash.Builder{}, ready)
	counts := balancertest.Counts(t, p, 40000, func(i int) balancer.PickInfo { return balancer.WithKey(uint64(i)) })
	balancertest.CheckDistribution(t, ready, counts, 0.1)
}

func TestPickDeterministic(t *testing.T) {
	for _, b := range []ringhash.Builder{{}, {Epsilon: 0.5}} {
		t.Run(fmt.Sprintf("epsilon=%g", b.Epsilon), func(t *testing.T) {
			balancertest.CheckDeterministic(t, b, balancertest.RandomKeys(3), slices.Repeat([]float64{1}, 25)...)
		})
	}
}

func TestDisruptionOnRemoval(t *testing.T) {
	// Measured: about 1.0 × the ideal 1/n (only the removed endpoint's
	// points' keys move, plus the few arcs whose point count changes).
	for _, n := range []int{3, 10, 100, 1000} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			before := build(t, ringhash.Builder{}, ready)
			after := build(t, ringhash.Builder{}, balancertest.Without(ready, n/2))
			d := balancertest.Disruption(t, before, after, 100000)
			ratio := d * float64(n)
			t.Logf("disruption %.5f, ideal %.5f: %.3f×", d, 1/float64(n), ratio)
			assert.LessOrEqual(t, ratio, 1.2)
			if n <= 100 {
				// Too few keys land on one of 1000 for a lower bound.
				assert.GreaterOrEqual(t, ratio, 0.5)
			}
		})
	}
	t.Run("moves only the removed endpoint's keys", func(t *testing.T) {
		ready := balancertest.Ready(20)
		gone := ready[7].Endpoint.Addr()
		before := build(t, ringhash.Builder{}, ready)
		after := build(t, ringhash.Builder{}, balancertest.Without(ready, 7))
		keys := balancertest.RandomKeys(9)
		for i := range 20000 {
			a, _ := before.Pick(keys(i))
			b, _ := after.Pick(keys(i))
			if a.Addr() != gone {
				require.Equal(t, a.Addr(), b.Addr(), "key %d moved from a remaining endpoint", i)
			}
		}
	})
}

// checkBound fails t if any endpoint of ready holds more in-flight work
// than ⌈(1+ε)·T·w/W⌉ + slack, where T is the total in flight.
func checkBound(t *testing.T, ready []balancer.Weighted, eps float64, slack int64) {
	t.Helper()
	var total int64
	sumW := 0.0
	for _, w := range ready {
		total += w.Endpoint.InFlight()
		sumW += w.Weight
	}
	for _, w := range ready {
		bound := int64(math.Ceil((1+eps)*float64(total)*w.Weight/sumW)) + slack
		require.LessOrEqual(t, w.Endpoint.InFlight(), bound, "%v (weight %g) with %d in flight in all", w.Endpoint.Addr(), w.Weight, total)
	}
}

func TestBoundedLoad(t *testing.T) {
	tests := []struct {
		name    string
		eps     float64
		weights []float64
		keys    func(int) balancer.PickInfo
	}{
		{"hot key", 0.25, slices.Repeat([]float64{1}, 8), func(int) balancer.PickInfo { return balancer.WithKey(7) }},
		{"random keys", 0.25, slices.Repeat([]float64{1}, 8), balancertest.RandomKeys(1)},
		{"keyless", 0.5, slices.Repeat([]float64{1}, 5), nil},
		{"weighted hot key", 0.25, []float64{1, 2, 3, 0.5}, func(int) balancer.PickInfo { return balancer.WithKey(3) }},
		{"tight", 0.01, slices.Repeat([]float64{1}, 10), func(i int) balancer.PickInfo { return balancer.WithKey(uint64(i % 3)) }},
		{"one endpoint", 0.25, []float64{1}, balancertest.RandomKeys(2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(tt.weights...)
			p := build(t, ringhash.Builder{Epsilon: tt.eps}, ready)
			var held []*balancer.Endpoint
			for i := range 2000 {
				var info balancer.PickInfo
				if tt.keys != nil {
					info = tt.keys(i)
				}
				ep, err := p.Pick(info)
				require.NoError(t, err)
				ep.Start()
				held = append(held, ep)
				checkBound(t, ready, tt.eps, 0)
				// Finish some work now and then: the bound holds at
				// every placement, for any mix of loads.
				if i%7 == 3 {
					j := mrand.N(len(held))
					held[j].Done(nil, 0)
					held = slices.Delete(held, j, j+1)
				}
			}
		})
	}
}

func TestBoundedLoadConcurrent(t *testing.T) {
	const eps, n, workers, perWorker = 0.25, 10, 8, 300
	hot := func(i int) balancer.PickInfo { return balancer.WithKey(uint64(i % 4)) }

	t.Run("placements serialised", func(t *testing.T) {
		// Many goroutines place and hold work; each placement (pick,
		// then Start) is atomic, as when one event loop places work.
		ready := balancertest.Ready(n)
		p := build(t, ringhash.Builder{Epsilon: eps}, ready)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := range perWorker {
					mu.Lock()
					ep, err := p.Pick(hot(i))
					if assert.NoError(t, err) {
						ep.Start()
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		checkBound(t, ready, eps, 0)
	})

	t.Run("picks racing", func(t *testing.T) {
		// Unsynchronised: a pick may read the counters before a racing
		// pick's Start, so each endpoint may exceed the bound by at
		// most workers-1.
		ready := balancertest.Ready(n)
		p := build(t, ringhash.Builder{Epsilon: eps}, ready)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := range perWorker {
					ep, err := p.Pick(hot(i))
					if assert.NoError(t, err) {
						ep.Start()
					}
				}
			})
		}
		wg.Wait()
		checkBound(t, ready, eps, workers-1)
	})
}

// With Builder.Rand set, keyless picks are reproducible: the same seed
// gives the same picks, another seed other picks.
func TestSeededKeylessPicks(t *testing.T) {
	balancertest.CheckSeeded(t, func(src mrand.Source) balancer.Builder { return ringhash.Builder{Epsilon: 0.25, Rand: src} })
}

func TestBuildEmpty(t *testing.T) { balancertest.CheckEmpty(t, ringhash.Builder{}) }

func TestPickNoAllocs(t *testing.T) {
	for _, n := range []int{1, 3, 100, 1000} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			for _, b := range []ringhash.Builder{{}, {Epsilon: 0.25}} {
				p := b.Build(ready)
				balancertest.CheckNoAllocs(t, p, balancer.WithKey(0xfeedface))
				balancertest.CheckNoAllocs(t, p, balancer.PickInfo{})
			}
			// Bounded, with the key's endpoint busy: the walk and the
			// total do not allocate either.
			p := build(t, ringhash.Builder{Epsilon: 0.25}, ready)
			ep, _ := p.Pick(balancer.WithKey(1))
			for range 3 {
				ep.Start()
			}
			balancertest.CheckNoAllocs(t, p, balancer.WithKey(1))
		})
	}
}

func TestPickConcurrentWithUpdates(t *testing.T) {
	balancertest.CheckConcurrentWithUpdates(t, ringhash.Builder{Epsilon: 0.25})
}

// TestSlowStart shows a pool's slow start working through this hash
// policy: a recovered backend's share of keys ramps up over the window.
func TestSlowStart(t *testing.T) {
	balancertest.CheckSlowStart(t, ringhash.Builder{PointsPerWeight: 2000}, balancertest.RandomKeys(11), 0.03, 0.005)
}

func ExampleBuilder() {
	ep := func(s string) balancer.Weighted {
		return balancer.Weighted{Endpoint: balancer.NewEndpoint(balancer.Backend{Addr: netip.MustParseAddrPort(s)}), Weight: 1}
	}
	ready := []balancer.Weighted{ep("198.18.0.10:80"), ep("198.18.0.11:80"), ep("198.18.0.12:80")}

	// Bounded loads: no backend takes new work while it has more than
	// 1.25 × the average in flight.
	p := ringhash.Builder{Epsilon: 0.25}.Build(ready)
	session := balancer.WithKey(balancer.HashString("session-42"))

	first, _ := p.Pick(session)
	again, _ := p.Pick(session)
	fmt.Println("sticky while idle:", first == again)

	// The session's backend gets busy: with 4 requests in flight in all
	// (and one more to place) its bound is ⌈1.25 × 5/3⌉ = 3.
	for range 4 {
		first.Start()
	}
	spill, _ := p.Pick(session)
	fmt.Println("spills over when busy:", spill != first)
	// Output:
	// sticky while idle: true
	// spills over when busy: true
}

var (
	epSink  *balancer.Endpoint
	errSink error
)

func BenchmarkBuild(b *testing.B) { balancertest.BenchmarkBuild(b, ringhash.Builder{}) }

func BenchmarkPick(b *testing.B) {
	for _, tc := range []struct {
		name string
		b    ringhash.Builder
	}{{"", ringhash.Builder{}}, {"bounded/", ringhash.Builder{Epsilon: 0.25}}} {
		for _, n := range []int{3, 100, 1000} {
			b.Run(fmt.Sprintf("%sn=%d", tc.name, n), func(b *testing.B) {
				p := tc.b.Build(balancertest.Ready(n))
				b.ReportAllocs()
				k := uint64(0)
				for b.Loop() {
					k += 0x9e3779b97f4a7c15
					epSink, errSink = p.Pick(balancer.WithKey(k))
				}
			})
		}
	}
	// Bounded loads with every endpoint busy: each pick sums the n
	// in-flight counters (the O(n) path).
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprintf("bounded-busy/n=%d", n), func(b *testing.B) {
			ready := balancertest.Ready(n)
			for _, w := range ready {
				for range 10 {
					w.Endpoint.Start()
				}
			}
			p := ringhash.Builder{Epsilon: 0.25}.Build(ready)
			b.ReportAllocs()
			k := uint64(0)
			for b.Loop() {
				k += 0x9e3779b97f4a7c15
				epSink, errSink = p.Pick(balancer.WithKey(k))
			}
		})
	}
}

// BenchmarkPickParallel measures keyed picks from GOMAXPROCS goroutines.
func BenchmarkPickParallel(b *testing.B) {
	balancertest.BenchmarkPickKeyed(b, ringhash.Builder{}, true)
}
