package ewma

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

const ms = time.Millisecond

// state sets an endpoint's latency sample (0: none) and work in flight.
type state struct {
	latency  time.Duration
	inflight int
	weight   float64
}

func prepare(t0 time.Time, states ...state) []balancer.Weighted {
	ws := make([]float64, len(states))
	for i, s := range states {
		ws[i] = s.weight
		if ws[i] == 0 {
			ws[i] = 1
		}
	}
	ready := balancertest.ReadyWeights(ws...)
	for i, s := range states {
		if s.latency > 0 {
			ready[i].Endpoint.ObserveLatency(t0, s.latency)
		}
		for range s.inflight {
			ready[i].Endpoint.Start()
		}
	}
	return ready
}

// With two endpoints every pick compares both, so the outcome is
// deterministic unless they tie.
func TestCostOrder(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name string
		a, b state
		want int // 0 or 1; -1: a tie, both picked
	}{
		{"faster wins", state{latency: 10 * ms}, state{latency: 50 * ms}, 0},
		{"queue counts", state{latency: 10 * ms, inflight: 5}, state{latency: 50 * ms}, 1},             // 60 vs 50
		{"weight counts", state{latency: 10 * ms, inflight: 5, weight: 2}, state{latency: 50 * ms}, 0}, // 30 vs 50
		{"equal: tie", state{latency: 10 * ms, inflight: 1}, state{latency: 20 * ms}, -1},
		{"unsampled idle is tried", state{latency: 1 * ms}, state{}, 1},
		{"unsampled busy is penalised", state{latency: 900 * ms, inflight: 50}, state{inflight: 1}, 0},
		{"both unsampled: fewer in flight", state{inflight: 2}, state{inflight: 1}, 1},
		{"unsampled: in flight per weight", state{inflight: 3, weight: 2}, state{inflight: 1}, 1}, // P+1.5 vs P+1
		{"both fresh: tie", state{}, state{}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready := prepare(t0, tt.a, tt.b)
			counts := balancertest.Counts(t, Builder{}.Build(ready), 2000, nil)
			if tt.want < 0 {
				balancertest.CheckDistribution(t, ready, counts, 0.15)
				return
			}
			assert.Equal(t, 2000, counts[ready[tt.want].Endpoint], balancertest.Describe(ready, counts))
		})
	}
}

// A backend that was slow once is retried after its estimate decays below
// the others': 100 ms against a steady 10 ms decays past it after
// τ·ln(10) ≈ 23.03 s with the default τ of 10 s. Pick never reads the
// clock here; the decay follows from the sample times alone.
func TestIdleSlowEndpointIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ready := prepare(time.Now(), state{latency: 100 * ms}, state{latency: 10 * ms})
		slow, fast := ready[0].Endpoint, ready[1].Endpoint
		p := Builder{}.Build(ready)
		var retried time.Duration
		start := time.Now()
		for range 60 {
			time.Sleep(time.Second)
			fast.ObserveLatency(time.Now(), 10*ms)
			ep, err := p.Pick(balancer.PickInfo{})
			require.NoError(t, err)
			if ep == slow {
				retried = time.Since(start)
				break
			}
		}
		want := time.Duration(math.Ceil(balancer.DefaultEWMADecay.Seconds()*math.Ln10)) * time.Second
		assert.Equal(t, want, retried)
	})
}

// Endpoints with different decay constants cannot share the clock-free
// comparison; the picker reads the clock and decays each on its own.
func TestMixedDecayUsesClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := balancer.MustNew(balancer.Config{Builder: balancer.BuilderFunc(func([]balancer.Weighted) balancer.Picker {
			return balancer.ErrPicker(balancer.ErrNoBackend)
		}), EWMADecay: time.Second})
		defer pool.Close()
		a := balancertest.Addr(0)
		require.NoError(t, pool.Add(balancer.Backend{Addr: a}))
		quick := pool.Endpoint(a)                                                  // τ = 1 s
		slow := balancer.NewEndpoint(balancer.Backend{Addr: balancertest.Addr(1)}) // τ = 10 s
		now := time.Now()
		quick.ObserveLatency(now, 100*ms)
		slow.ObserveLatency(now, 50*ms)
		p := Builder{}.Build([]balancer.Weighted{{Endpoint: quick, Weight: 1}, {Endpoint: slow, Weight: 1}})
		require.False(t, p.(*Picker).sameDecay)

		pick := func() *balancer.Endpoint {
			ep, err := p.Pick(balancer.PickInfo{})
			require.NoError(t, err)
			return ep
		}
		assert.Same(t, slow, pick(), "at once: 100 ms vs 50 ms")
		// After 2 s: 100·e^-2 ≈ 13.5 ms vs 50·e^-0.2 ≈ 40.9 ms.
		time.Sleep(2 * time.Second)
		assert.Same(t, quick, pick())
	})
}

// A sampled cost above the no-sample penalty is decayed to now before it
// is compared with the penalty.
func TestHugeCostAgainstPenalty(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ready := prepare(time.Now(), state{latency: time.Duration(Penalty) / 2, inflight: 3}, state{inflight: 1})
		p := Builder{}.Build(ready)
		ep, err := p.Pick(balancer.PickInfo{})
		require.NoError(t, err)
		assert.Same(t, ready[1].Endpoint, ep, "2·Penalty vs Penalty+1")
		time.Sleep(10 * time.Second) // e^-1 · 2·Penalty < Penalty
		ep, err = p.Pick(balancer.PickInfo{})
		require.NoError(t, err)
		assert.Same(t, ready[0].Endpoint, ep)
	})
}

// Under a closed loop where one backend is 10× slower, latency-aware
// picks send it far less than its 1/n share.
func TestSlowBackendGetsLess(t *testing.T) {
	for _, n := range []int{3, 5, 100} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			slow := ready[0].Endpoint
			p := Builder{}.Build(ready)
			now := time.Unix(1_700_000_000, 0)
			const picks = 20000
			for range picks {
				now = now.Add(100 * time.Microsecond)
				ep, err := p.Pick(balancer.PickInfo{})
				require.NoError(t, err)
				latency := 10 * ms
				if ep == slow {
					latency = 100 * ms
				}
				ep.Start()
				ep.Done(nil, 0)
				ep.ObserveLatency(now, latency)
			}
			share := float64(slow.Requests()) / picks
			assert.Less(t, share, 0.3/float64(n), "slow backend got %.3f%% of picks", 100*share)
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

// The bounds in olderVsNewer never change the answer math.Exp gives.
func TestOlderVsNewerMatchesExp(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(5, 6))
	sign := func(v, w float64) int {
		switch {
		case v < w:
			return -1
		case v > w:
			return 1
		}
		return 0
	}
	for range 30_000 {
		old := math.Exp(rng.Float64()*20 - 5)
		newer := old * math.Exp(rng.NormFloat64())
		x := rng.ExpFloat64() * math.Pow(10, float64(rng.IntN(6)-4))
		require.Equal(t, sign(old*math.Exp(-x), newer), olderVsNewer(old, x, newer), "old %v x %v newer %v", old, x, newer)
	}
	assert.Equal(t, -1, olderVsNewer(5, 0.1, 5), "equal costs: decay breaks the tie")
}
