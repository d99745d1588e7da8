package circuit_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/circuit"
)

func TestBackoffDelayBounds(t *testing.T) {
	b := circuit.Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Rand: rand.NewPCG(1, 2)}
	for n, ceil := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 50 * time.Millisecond, 40: 50 * time.Millisecond} {
		var hi time.Duration
		for range 2000 {
			d := b.Delay(n)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.LessOrEqual(t, d, ceil, "retry %d", n)
			hi = max(hi, d)
		}
		assert.Greater(t, hi, ceil*9/10, "retry %d: the jitter spans the range", n)
	}
	var zero circuit.Backoff
	for range 100 {
		assert.LessOrEqual(t, zero.Delay(1), circuit.DefaultBackoffBase)
		assert.LessOrEqual(t, zero.Delay(10), 10*circuit.DefaultBackoffBase)
	}
}

func TestBackoffWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := circuit.Backoff{Base: time.Second, Max: time.Second}
		start := time.Now()
		require.NoError(t, b.Wait(t.Context(), 1))
		assert.LessOrEqual(t, time.Since(start), time.Second)

		// A wait that cannot end before the deadline is not started.
		ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
		defer cancel()
		b = circuit.Backoff{Base: time.Hour, Max: time.Hour, Rand: rand.NewPCG(3, 4)}
		start = time.Now()
		err := b.Wait(ctx, 1)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Zero(t, time.Since(start))

		// Cancellation ends a wait.
		ctx, cancel = context.WithCancel(t.Context())
		go func() {
			time.Sleep(time.Second)
			cancel()
		}()
		require.ErrorIs(t, b.Wait(ctx, 1), context.Canceled)
	})
}
