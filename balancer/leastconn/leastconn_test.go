package leastconn

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

// load starts k units of work on each endpoint of ready in turn.
func load(ready []balancer.Weighted, inflight ...int) {
	for i, k := range inflight {
		for range k {
			ready[i].Endpoint.Start()
		}
	}
}

func TestScanPicksExactMinimum(t *testing.T) {
	tests := []struct {
		name     string
		weights  []float64
		inflight []int
		want     []int // indices allowed; all of them must show up
	}{
		{"least", []float64{1, 1, 1}, []int{3, 1, 2}, []int{1}},
		{"ties at random", []float64{1, 1, 1, 1}, []int{0, 5, 0, 5}, []int{0, 2}},
		{"all idle", []float64{1, 1, 1}, []int{0, 0, 0}, []int{0, 1, 2}},
		{"idle: heavier wins", []float64{1, 3, 1}, []int{0, 0, 0}, []int{1}},
		{"per weight", []float64{1, 4}, []int{1, 3}, []int{1}},      // 2/1 vs 4/4
		{"weighted tie", []float64{1, 2}, []int{0, 1}, []int{0, 1}}, // 1/1 vs 2/2
		{"eight", []float64{1, 1, 1, 1, 1, 1, 1, 1}, []int{4, 4, 4, 4, 4, 4, 4, 3}, []int{7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(tt.weights...)
			load(ready, tt.inflight...)
			p := Builder{}.Build(ready)
			require.True(t, p.(*Picker).scan)
			counts := balancertest.Counts(t, p, 12000, nil)
			for ep, c := range counts {
				idx := int(ep.Addr().Port()) - 10000
				require.Contains(t, tt.want, idx, "picked %d (%d times)", idx, c)
			}
			// Ties: each allowed endpoint gets a fair share (σ ≤ 1.4%
			// at ≥ 4000 expected; ±10% is over 7σ).
			want := make([]balancer.Weighted, len(tt.want))
			for k, i := range tt.want {
				want[k] = balancer.Weighted{Endpoint: ready[i].Endpoint, Weight: 1}
			}
			balancertest.CheckDistribution(t, want, counts, 0.1)
		})
	}
}

// Two random choices never pick the unique most-loaded endpoint: it
// loses every comparison.
func TestTwoChoicesAvoidMostLoaded(t *testing.T) {
	for _, n := range []int{3, 9, 100, 1000} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			inflight := make([]int, n)
			for i := range inflight {
				inflight[i] = i % 5
			}
			inflight[n/2] = 10
			load(ready, inflight...)
			p := Builder{ScanLimit: -1}.Build(ready)
			require.False(t, p.(*Picker).scan)
			picks := max(50*n, 3000)
			counts := balancertest.Counts(t, p, picks, nil)
			assert.Zero(t, counts[ready[n/2].Endpoint])
			if n == 3 {
				// Pairs {0,1}, {0,2}, {1,2} with loads 0, 10, 2: endpoint
				// 0 wins two pairs of three.
				assert.InDelta(t, 2.0/3, float64(counts[ready[0].Endpoint])/float64(picks), 0.05) // σ ≈ 0.9%
			}
		})
	}
}

// An endpoint whose work never finishes gets at most one pick while the
// others finish theirs at once.
func TestStuckEndpointStarves(t *testing.T) {
	for _, n := range []int{3, 5, 100} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			stuck := ready[0].Endpoint
			p := Builder{}.Build(ready)
			for range 1000 {
				ep, err := p.Pick(balancer.PickInfo{})
				require.NoError(t, err)
				ep.Start()
				if ep != stuck {
					ep.Done(nil, 0)
				}
			}
			assert.LessOrEqual(t, stuck.InFlight(), int64(1))
		})
	}
}

// Under a closed loop with equal service times (each unit of work
// finishes after the next `depth` picks), work in flight, and so picks,
// follow the weights.
func TestClosedLoopFollowsWeights(t *testing.T) {
	for _, scan := range []int{0, -1} {
		t.Run(fmt.Sprint("scan limit ", scan), func(t *testing.T) {
			ready := balancertest.ReadyWeights(1, 2, 3, 4)
			p := Builder{ScanLimit: scan}.Build(ready)
			const depth, picks = 40, 40000
			var ring [depth]*balancer.Endpoint
			counts := map[*balancer.Endpoint]int{}
			for k := range picks {
				if old := ring[k%depth]; old != nil {
					old.Done(nil, 0)
				}
				ep, err := p.Pick(balancer.PickInfo{})
				require.NoError(t, err)
				ep.Start()
				ring[k%depth] = ep
				counts[ep]++
			}
			tol := 0.05
			if scan < 0 {
				tol = 0.2 // two choices balance more loosely
			}
			balancertest.CheckDistribution(t, ready, counts, tol)
		})
	}
}

func TestIdleDistribution(t *testing.T) {
	for _, n := range sizes {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			// k picks per endpoint; the band is 6.5 standard deviations.
			k := max(400, 100_000/n)
			ready := balancertest.Ready(n)
			balancertest.CheckDistribution(t, ready, balancertest.Counts(t, Builder{}.Build(ready), k*n, nil), 6.5/math.Sqrt(float64(k)))
		})
	}
}

// BenchmarkScanVsTwoChoices compares the exact scan with two random
// choices at the sizes around DefaultScanLimit.
func BenchmarkScanVsTwoChoices(b *testing.B) {
	for _, n := range []int{4, 8, 16} {
		for _, mode := range []struct {
			name  string
			limit int
		}{{"scan", n}, {"p2c", -1}} {
			b.Run(fmt.Sprintf("n=%d/%s", n, mode.name), func(b *testing.B) {
				p := Builder{ScanLimit: mode.limit}.Build(loadedReady(n))
				b.ReportAllocs()
				for b.Loop() {
					_, _ = p.Pick(balancer.PickInfo{})
				}
			})
		}
	}
}
