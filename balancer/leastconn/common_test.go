package leastconn

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

// sizes are the ready-set sizes every property is checked at.
var sizes = []int{1, 3, 100, 1000}

// loadedReady returns n endpoints with mixed weights, some work in flight
// and latency samples, so load-aware policies take their real code paths.
func loadedReady(n int) []balancer.Weighted {
	ws := make([]float64, n)
	for i := range ws {
		ws[i] = float64(1 + i%3)
	}
	ready := balancertest.ReadyWeights(ws...)
	now := time.Now()
	for i, w := range ready {
		for range i % 4 {
			w.Endpoint.Start()
		}
		w.Endpoint.ObserveLatency(now.Add(time.Duration(i)*time.Millisecond), time.Duration(1+i%5)*time.Millisecond)
	}
	return ready
}

func TestBuildEmpty(t *testing.T) {
	_, err := Builder{}.Build(nil).Pick(balancer.PickInfo{})
	require.ErrorIs(t, err, balancer.ErrNoBackend)
}

func TestNoAllocs(t *testing.T) {
	for _, n := range sizes {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			balancertest.CheckNoAllocs(t, Builder{}.Build(balancertest.Ready(n)), balancer.PickInfo{})
			balancertest.CheckNoAllocs(t, Builder{}.Build(loadedReady(n)), balancer.PickInfo{})
		})
	}
}

// TestPickConcurrentWithUpdates picks through a real pool from several
// goroutines while another changes membership, health, drain and weights.
// Run it with -race.
func TestPickConcurrentWithUpdates(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: Builder{}, PanicThreshold: 0.3})
	defer pool.Close()
	const members = 12
	backends := make([]balancer.Backend, members)
	valid := map[netip.AddrPort]bool{}
	for i := range backends {
		backends[i] = balancer.Backend{Addr: balancertest.Addr(i), Weight: uint32(1 + i%3)}
		valid[backends[i].Addr] = true
	}
	require.NoError(t, pool.Set(backends))

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range 2000 {
			a := backends[i%members].Addr
			switch i % 5 {
			case 0:
				pool.SetHealthy(a, i%2 == 0)
			case 1:
				pool.SetDraining(a, i%3 == 0)
			case 2:
				pool.SetWeight(a, uint32(1+i%4))
			case 3:
				pool.Remove(a)
			case 4:
				assert.NoError(t, pool.Add(backends[i%members]))
			}
		}
	})
	for g := range 4 {
		wg.Go(func() {
			// At least 5000 picks each, so picks overlap the updates even
			// when the scheduler runs the updater first.
			for i := range 200_000 {
				if i >= 5000 {
					select {
					case <-done:
						return
					default:
					}
				}
				ep, err := pool.Pick(balancer.PickInfo{Key: uint64(i * g), HasKey: g%2 == 0})
				if err != nil {
					if !errors.Is(err, balancer.ErrNoBackend) {
						t.Errorf("pick: %v", err)
						return
					}
					continue
				}
				if ep == nil || !valid[ep.Addr()] {
					t.Errorf("picked %v", ep)
					return
				}
				ep.Start()
				ep.Done(nil, time.Duration(1+i%7)*time.Millisecond)
			}
		})
	}
	wg.Wait()
}

func benchmarkPick(b *testing.B, parallel bool) {
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprint("n=", n), func(b *testing.B) {
			p := Builder{}.Build(loadedReady(n))
			b.ReportAllocs()
			if parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						_, _ = p.Pick(balancer.PickInfo{})
					}
				})
				return
			}
			for b.Loop() {
				_, _ = p.Pick(balancer.PickInfo{})
			}
		})
	}
}

// BenchmarkPick measures one pick on one goroutine.
func BenchmarkPick(b *testing.B) { benchmarkPick(b, false) }

// BenchmarkPickParallel measures picks from GOMAXPROCS goroutines at once.
func BenchmarkPickParallel(b *testing.B) { benchmarkPick(b, true) }

// Weights the Builder contract rules out (zero, negative, NaN, +Inf)
// count as 1 instead of breaking the build or the picks.
func TestInvalidWeightsCountAsOne(t *testing.T) {
	ready := balancertest.ReadyWeights(1, 1, 1, 1, 2)
	ready[0].Weight, ready[1].Weight, ready[2].Weight, ready[3].Weight = 0, math.NaN(), -1, math.Inf(1)
	p := Builder{}.Build(ready)
	counts := balancertest.Counts(t, p, 600, nil)
	for ep := range counts {
		assert.NotNil(t, ep)
	}
}
