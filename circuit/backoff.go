package circuit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// DefaultBackoffBase is Backoff.Base when it is zero (Envoy's
// base_interval).
const DefaultBackoffBase = 25 * time.Millisecond

// Backoff is the wait before a retry, as Envoy's retry back-off: before
// retry n (n ≥ 1) a uniformly random time in [0, min(Max, Base×2ⁿ⁻¹)]
// ("full jitter"), so clients that failed together do not retry together.
// The zero value uses the defaults. A Backoff is a value, safe for
// concurrent use if its Rand is.
type Backoff struct {
	// Base is the ceiling of the first wait. Zero means
	// DefaultBackoffBase.
	Base time.Duration
	// Max caps the ceiling. Zero means 10 × Base (Envoy's default).
	Max time.Duration
	// Rand, when set, is the source of the jitter instead of
	// math/rand/v2's global functions.
	Rand rand.Source
}

// Delay returns the wait before retry n (1 for the first retry).
func (b Backoff) Delay(n int) time.Duration {
	base := b.Base
	if base <= 0 {
		base = DefaultBackoffBase
	}
	ceil := b.Max
	if ceil <= 0 {
		ceil = 10 * base
	}
	if n < 1 {
		n = 1
	}
	if c := base << min(n-1, 30); c > 0 && c < ceil {
		ceil = c
	}
	if b.Rand != nil {
		return time.Duration(rand.New(b.Rand).Int64N(int64(ceil) + 1))
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// Next returns the wait before retry n and whether the retry fits before
// ctx's deadline (a retry that cannot finish in time is not worth
// starting; without a deadline it always fits).
func (b Backoff) Next(ctx context.Context, n int) (time.Duration, bool) {
	d := b.Delay(n)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return d, false
	}
	return d, true
}

// Wait blocks for Delay(n), or until ctx ends (returning its error).
// When the wait would outlast ctx's deadline it returns at once with an
// error wrapping context.DeadlineExceeded.
func (b Backoff) Wait(ctx context.Context, n int) error {
	d, ok := b.Next(ctx, n)
	if !ok {
		return fmt.Errorf("circuit: a backoff of %v would pass the deadline: %w", d, context.DeadlineExceeded)
	}
	return Sleep(ctx, d)
}

// Sleep blocks for d or until ctx ends, and returns ctx's error if it
// ended first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
