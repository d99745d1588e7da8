package roundrobin

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

// Every shard visits every endpoint exactly once per n picks: strict
// rotation from its own offset.
func TestShardRotation(t *testing.T) {
	for _, n := range []int{2, 3, 7, 100} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			p := Builder{}.Build(balancertest.Ready(n)).(*Picker)
			for s := range p.ctr.Shards() {
				first := p.ctr.On(s)
				seen := map[uint64]bool{first: true}
				prev := first
				for range n - 1 {
					i := p.ctr.On(s)
					require.Equal(t, (prev+1)%uint64(n), i, "shard %d", s)
					seen[i] = true
					prev = i
				}
				assert.Len(t, seen, n)
				assert.Equal(t, first, p.ctr.On(s), "shard %d wraps", s)
			}
		})
	}
}

// Shards start at random offsets so pickers rebuilt together do not herd.
func TestShardsStartAtRandomOffsets(t *testing.T) {
	p := Builder{}.Build(balancertest.Ready(1000)).(*Picker)
	starts := map[uint64]bool{}
	for s := range p.ctr.Shards() {
		starts[p.ctr.On(s)] = true
	}
	// 16+ shards drawing from 1000 offsets: all equal has probability 1e-45.
	assert.Greater(t, len(starts), 1)
}

func TestDistribution(t *testing.T) {
	for _, n := range sizes {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			p := Builder{}.Build(ready)
			const perEndpoint = 200
			counts := balancertest.Counts(t, p, n*perEndpoint, nil)
			// Each shard is off by less than one pick per endpoint.
			tol := float64(p.(*Picker).ctr.Shards()) / perEndpoint
			balancertest.CheckDistribution(t, ready, counts, tol)
		})
	}
}

// Picks from several goroutines still spread within the shard bound.
func TestDistributionParallel(t *testing.T) {
	ready := balancertest.Ready(10)
	p := Builder{}.Build(ready)
	const goroutines, each = 8, 5000
	var mu sync.Mutex
	total := map[*balancer.Endpoint]int{}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines) // require only on the test's goroutine
	for range goroutines {
		wg.Go(func() {
			c := map[*balancer.Endpoint]int{}
			for range each {
				ep, err := p.Pick(balancer.PickInfo{})
				if err != nil {
					errs <- err
					return
				}
				c[ep]++
			}
			mu.Lock()
			defer mu.Unlock()
			for ep, k := range c {
				total[ep] += k
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	shards := float64(p.(*Picker).ctr.Shards())
	balancertest.CheckDistribution(t, ready, total, shards/(goroutines*each/10))
}

func TestIgnoresWeights(t *testing.T) {
	ready := balancertest.ReadyWeights(1, 2, 7.5)
	p := Builder{}.Build(ready)
	counts := balancertest.Counts(t, p, 30000, nil)
	for _, w := range ready {
		assert.InDelta(t, 10000, counts[w.Endpoint], float64(p.(*Picker).ctr.Shards()))
	}
}
