package circuit_test

import (
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/circuit"
)

func TestBreakerThresholds(t *testing.T) {
	for _, tc := range []struct {
		kind circuit.Kind
		thr  circuit.Thresholds
		want error
	}{
		{circuit.Connections, circuit.Thresholds{MaxConnections: 2}, circuit.ErrMaxConnections},
		{circuit.PendingRequests, circuit.Thresholds{MaxPendingRequests: 2}, circuit.ErrMaxPendingRequests},
		{circuit.Requests, circuit.Thresholds{MaxRequests: 2}, circuit.ErrMaxRequests},
		{circuit.Retries, circuit.Thresholds{MaxRetries: 2}, circuit.ErrMaxRetries},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			b, err := circuit.NewBreaker(tc.thr)
			require.NoError(t, err)
			require.NoError(t, b.Acquire(tc.kind))
			require.NoError(t, b.Acquire(tc.kind))
			err = b.Acquire(tc.kind)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, circuit.ErrOpen)
			assert.EqualValues(t, 2, b.Active(tc.kind))
			assert.EqualValues(t, 1, b.Overflows(tc.kind))
			b.Release(tc.kind)
			require.NoError(t, b.Acquire(tc.kind), "a released unit is available again")
			// The other gauges are not limited.
			other := (tc.kind + 1) % 4
			for range 10 {
				require.NoError(t, b.Acquire(other))
			}
			assert.Equal(t, uint64(0), b.Stats().Overflow[other])
		})
	}
}

func TestZeroBreakerLimitsNothing(t *testing.T) {
	var b circuit.Breaker
	for range 1000 {
		require.NoError(t, b.Acquire(circuit.Requests))
		require.NoError(t, b.Acquire(circuit.Retries))
	}
	assert.EqualValues(t, 1000, b.Active(circuit.Retries))
}

func TestRetryBudget(t *testing.T) {
	b, err := circuit.NewBreaker(circuit.Thresholds{
		MaxRetries:  1, // ignored: the budget overrides it, as in Envoy
		RetryBudget: circuit.RetryBudget{Percent: 20, MinConcurrency: 3},
	})
	require.NoError(t, err)
	// Little work in flight: the minimum concurrency applies.
	assert.Equal(t, 3.0, b.RetryLimit())
	for range 3 {
		require.NoError(t, b.Acquire(circuit.Retries))
	}
	require.ErrorIs(t, b.Acquire(circuit.Retries), circuit.ErrRetryBudgetExhausted)
	// 100 requests and 50 pending: 20% of 150 = 30 retries.
	for range 100 {
		require.NoError(t, b.Acquire(circuit.Requests))
	}
	for range 50 {
		require.NoError(t, b.Acquire(circuit.PendingRequests))
	}
	assert.Equal(t, 30.0, b.RetryLimit())
	admitted := 3
	for b.Acquire(circuit.Retries) == nil {
		admitted++
	}
	assert.Equal(t, 30, admitted)
	assert.EqualValues(t, 2, b.Overflows(circuit.Retries))
}

func TestValidate(t *testing.T) {
	for _, thr := range []circuit.Thresholds{
		{MaxConnections: -1},
		{MaxRetries: -1},
		{RetryBudget: circuit.RetryBudget{Percent: 101}},
		{RetryBudget: circuit.RetryBudget{Percent: -1}},
		{RetryBudget: circuit.RetryBudget{MinConcurrency: -1}},
	} {
		_, err := circuit.NewBreaker(thr)
		require.ErrorIs(t, err, circuit.ErrConfig, "%+v", thr)
		_, err = circuit.NewGroup(circuit.Config{Member: thr})
		require.ErrorIs(t, err, circuit.ErrConfig, "%+v", thr)
	}
}

func TestGroupBothLevels(t *testing.T) {
	g, err := circuit.NewGroup(circuit.Config{
		Pool:   circuit.Thresholds{MaxRequests: 3},
		Member: circuit.Thresholds{MaxRequests: 2},
	})
	require.NoError(t, err)
	a := g.Member(netip.MustParseAddrPort("198.18.0.1:80"))
	b := g.Member(netip.MustParseAddrPort("198.18.0.2:80"))
	require.Same(t, a, g.Member(netip.MustParseAddrPort("198.18.0.1:80")))

	require.NoError(t, g.Acquire(a, circuit.Requests))
	require.NoError(t, g.Acquire(a, circuit.Requests))
	// The member is full; the pool's unit taken first is given back.
	require.ErrorIs(t, g.Acquire(a, circuit.Requests), circuit.ErrMaxRequests)
	assert.EqualValues(t, 2, g.Pool().Active(circuit.Requests))
	require.NoError(t, g.Acquire(b, circuit.Requests))
	// The pool is full.
	require.ErrorIs(t, g.Acquire(b, circuit.Requests), circuit.ErrMaxRequests)
	assert.EqualValues(t, 1, g.Pool().Overflows(circuit.Requests))
	assert.EqualValues(t, 1, a.Overflows(circuit.Requests))

	// Update applies to existing members too.
	require.NoError(t, g.Update(circuit.Config{Member: circuit.Thresholds{MaxRequests: 1}}))
	require.ErrorIs(t, g.Acquire(b, circuit.Requests), circuit.ErrMaxRequests)
	g.Release(a, circuit.Requests)
	g.Release(a, circuit.Requests)
	require.NoError(t, g.Acquire(a, circuit.Requests))

	g.Forget(netip.MustParseAddrPort("198.18.0.1:80"))
	require.NotSame(t, a, g.Member(netip.MustParseAddrPort("198.18.0.1:80")), "a forgotten member gets a new breaker")
}

func TestConcurrentAcquireNeverExceeds(t *testing.T) {
	b, err := circuit.NewBreaker(circuit.Thresholds{MaxRequests: 5})
	require.NoError(t, err)
	var mu sync.Mutex
	peak, over := int64(0), 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				if err := b.Acquire(circuit.Requests); err != nil {
					mu.Lock()
					over++
					mu.Unlock()
					continue
				}
				n := b.Active(circuit.Requests)
				mu.Lock()
				peak = max(peak, n)
				mu.Unlock()
				b.Release(circuit.Requests)
			}
		})
	}
	wg.Wait()
	assert.LessOrEqual(t, peak, int64(5))
	assert.EqualValues(t, over, b.Overflows(circuit.Requests))
	assert.Zero(t, b.Active(circuit.Requests))
}

func TestAcquireDoesNotAllocate(t *testing.T) {
	g, err := circuit.NewGroup(circuit.Config{
		Pool:   circuit.Thresholds{MaxRequests: 1, RetryBudget: circuit.RetryBudget{Percent: 20}},
		Member: circuit.Thresholds{MaxRequests: 1},
	})
	require.NoError(t, err)
	m := g.Member(netip.MustParseAddrPort("198.18.0.1:80"))
	allocs := testing.AllocsPerRun(100, func() {
		if g.Acquire(m, circuit.Requests) == nil {
			_ = g.Acquire(m, circuit.Requests) // refused
			_ = g.Acquire(m, circuit.Retries)
			g.Release(m, circuit.Retries)
			g.Release(m, circuit.Requests)
		}
	})
	assert.Zero(t, allocs)
}

func TestErrorsAreDistinct(t *testing.T) {
	errs := []error{circuit.ErrMaxConnections, circuit.ErrMaxPendingRequests, circuit.ErrMaxRequests, circuit.ErrMaxRetries, circuit.ErrRetryBudgetExhausted}
	for i, a := range errs {
		for j, b := range errs {
			assert.Equal(t, i == j, errors.Is(a, b), "%v / %v", a, b)
		}
	}
}
