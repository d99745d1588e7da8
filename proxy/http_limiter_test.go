package proxy

import (
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

func testUpstream(port uint16) *upstream {
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	return &upstream{ep: balancer.NewEndpoint(balancer.Backend{Addr: addr}), addr: addr}
}

func TestLimiter(t *testing.T) {
	t.Run("slots, FIFO hand-over and timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := &limiter{max: 1, maxQueue: 2}
			a := testUpstream(1)
			require.True(t, l.tryAcquire(a))
			require.False(t, l.tryAcquire(a))

			got := make(chan string, 3)
			wait := func(name string, pin *upstream) {
				u, err := l.wait(context.Background(), pin, nil, time.Second)
				if err != nil {
					got <- name + ": " + err.Error()
					return
				}
				got <- name + ": " + u.addr.String()
			}
			go wait("first", nil)
			synctest.Wait()
			go wait("second", nil)
			synctest.Wait()
			// The queue is full.
			_, err := l.wait(context.Background(), nil, nil, time.Second)
			assert.ErrorIs(t, err, ErrQueueFull)

			l.release(a) // to the oldest waiter
			synctest.Wait()
			assert.Equal(t, "first: 127.0.0.1:1", <-got)
			time.Sleep(time.Second) // fake time: the second waiter times out
			synctest.Wait()
			assert.Equal(t, "second: "+ErrQueueTimeout.Error(), <-got)
			assert.Equal(t, 1, a.active, "the first waiter holds the slot")
			l.release(a)
			assert.Zero(t, a.active)
			assert.Zero(t, l.queued)
		})
	})
	t.Run("a freed slot goes to a waiter that can use it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := &limiter{max: 1, maxQueue: 4}
			a, b := testUpstream(1), testUpstream(2)
			require.True(t, l.tryAcquire(a))
			require.True(t, l.tryAcquire(b))
			got := make(chan *upstream, 2)
			go func() { u, _ := l.wait(context.Background(), a, nil, time.Minute); got <- u }() // pinned to a
			synctest.Wait()
			go func() { u, _ := l.wait(context.Background(), nil, []*upstream{a}, time.Minute); got <- u }() // not a
			synctest.Wait()
			l.release(b) // skips the pinned waiter, serves the second
			synctest.Wait()
			assert.Same(t, b, <-got)
			l.release(a)
			synctest.Wait()
			assert.Same(t, a, <-got)
			assert.Zero(t, l.queued)
		})
	})
	t.Run("context cancel leaves the queue", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := &limiter{max: 1, maxQueue: 1}
			a := testUpstream(1)
			require.True(t, l.tryAcquire(a))
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { _, err := l.wait(ctx, nil, nil, time.Minute); errc <- err }()
			synctest.Wait()
			cancel()
			assert.ErrorIs(t, <-errc, context.Canceled)
			assert.Zero(t, l.queued)
			l.release(a)
			assert.Zero(t, a.active)
		})
	})
	t.Run("unlimited", func(t *testing.T) {
		l := &limiter{}
		a := testUpstream(1)
		for range 100 {
			require.True(t, l.tryAcquire(a))
		}
		l.release(a)
		assert.Zero(t, a.active)
	})
}
