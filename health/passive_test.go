package health

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	fail = Outcome{Failed: true}
	ok   = Outcome{}
)

func observeN(c *Checker, a netip.AddrPort, o Outcome, n int) {
	for range n {
		c.Observe(a, o)
	}
}

func TestConsecutiveFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Passive: PassiveConfig{BaseEjection: 10 * time.Second}})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a})) // passive only
		synctest.Wait()
		rec.take()

		observeN(c, a, fail, 4)
		c.Observe(a, ok) // a success resets the count
		observeN(c, a, fail, 4)
		synctest.Wait()
		assert.Equal(t, Healthy, c.State(a))
		c.Observe(a, fail)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		assert.Equal(t, []tr{{Unhealthy, "passive: consecutive failures"}}, transitions(rec.take()))

		observeN(c, a, fail, 100) // ignored while ejected
		step(10*time.Second - time.Millisecond)
		assert.Equal(t, Unhealthy, c.State(a))
		step(time.Millisecond)
		assert.Equal(t, Healthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "ejection expired"}}, transitions(rec.take()))
		st, _ := c.Status(a)
		assert.Equal(t, 1, st.Ejections)
	})
}

func TestEjectionBackoffAndDecay(t *testing.T) {
	const base, maxEj = 10 * time.Second, 35 * time.Second
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Passive: PassiveConfig{ConsecutiveFailures: 1, BaseEjection: base, MaxEjection: maxEj}})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a}))
		synctest.Wait()
		rec.take()

		// Each ejection is base × n, capped; the target fails again as
		// soon as it is back, so nothing decays.
		for _, want := range []time.Duration{base, 2 * base, 3 * base, maxEj, maxEj} {
			c.Observe(a, fail)
			synctest.Wait()
			start := time.Now()
			require.Equal(t, Unhealthy, c.State(a))
			step(want - time.Millisecond)
			require.Equal(t, Unhealthy, c.State(a), "ejection shorter than %v", want)
			step(time.Millisecond)
			require.Equal(t, Healthy, c.State(a), "ejection longer than %v", want)
			evs := rec.take()
			require.Len(t, evs, 2)
			assert.Equal(t, want, evs[1].Time.Sub(start))
		}
		st, _ := c.Status(a)
		assert.Equal(t, 5, st.Ejections)

		// Behaving for 3 × base forgives three ejections: the next one is
		// 3 × base long (n = 5 - 3 + 1).
		step(3 * base)
		st, _ = c.Status(a)
		assert.Equal(t, 2, st.Ejections, "decayed")
		c.Observe(a, fail)
		synctest.Wait()
		start := time.Now()
		step(3*base - time.Millisecond)
		assert.Equal(t, Unhealthy, c.State(a))
		step(time.Millisecond)
		assert.Equal(t, Healthy, c.State(a))
		evs := rec.take()
		require.Len(t, evs, 2)
		assert.Equal(t, 3*base, evs[1].Time.Sub(start))
	})
}

func TestFailureRateWindow(t *testing.T) {
	cfg := PassiveConfig{
		ConsecutiveFailures: -1,
		FailureRate:         0.5,
		Window:              10 * time.Second,
		Buckets:             10,
		MinRequests:         10,
	}
	t.Run("rate over the window ejects", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, rec := newChecker(t, Config{Passive: cfg})
			a := addr(1)
			require.NoError(t, c.SetTarget(Target{Addr: a}))
			for range 5 {
				c.Observe(a, ok)
				c.Observe(a, fail)
				step(time.Second)
			}
			assert.Equal(t, Unhealthy, c.State(a), "5 of 10 outcomes failed")
			assert.Equal(t, []tr{{Healthy, "added"}, {Unhealthy, "passive: failure rate"}}, transitions(rec.take()))
		})
	})
	t.Run("below the rate", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, _ := newChecker(t, Config{Passive: cfg})
			a := addr(1)
			require.NoError(t, c.SetTarget(Target{Addr: a}))
			observeN(c, a, ok, 11)
			observeN(c, a, fail, 4)
			observeN(c, a, ok, 1)
			observeN(c, a, fail, 4)
			synctest.Wait()
			assert.Equal(t, Healthy, c.State(a), "8 of 20 outcomes failed")
		})
	})
	t.Run("old outcomes leave the window", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, _ := newChecker(t, Config{Passive: cfg})
			a := addr(1)
			require.NoError(t, c.SetTarget(Target{Addr: a}))
			observeN(c, a, fail, 9) // under MinRequests
			step(10 * time.Second)  // those nine expire
			observeN(c, a, fail, 9)
			synctest.Wait()
			assert.Equal(t, Healthy, c.State(a))
			step(5 * time.Second) // these nine are still in the window
			c.Observe(a, fail)
			synctest.Wait()
			assert.Equal(t, Unhealthy, c.State(a))
		})
	})
}

func TestLatencyEjection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Passive: PassiveConfig{
			LatencyThreshold: 100 * time.Millisecond,
			LatencyMinSlow:   5,
			LatencyRate:      0.5,
			MinRequests:      8,
		}})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a}))
		slow := Outcome{Latency: 150 * time.Millisecond}
		fast := Outcome{Latency: 10 * time.Millisecond}
		observeN(c, a, fast, 6)
		observeN(c, a, slow, 5)
		synctest.Wait()
		assert.Equal(t, Healthy, c.State(a), "5 slow of 11 is under half")
		observeN(c, a, slow, 1)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "added"}, {Unhealthy, "passive: latency"}}, transitions(rec.take()))
	})
}

func TestMaxEjectedPercent(t *testing.T) {
	for _, tc := range []struct {
		pct     float64
		targets int
		want    int
	}{
		{pct: 30, targets: 10, want: 3},
		{pct: 0, targets: 10, want: 1},  // default 10%
		{pct: 10, targets: 3, want: 1},  // one may always be ejected
		{pct: 100, targets: 4, want: 4}, // everything
		{pct: 50, targets: 5, want: 2},
	} {
		t.Run("", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, rec := newChecker(t, Config{Passive: PassiveConfig{MaxEjectedPercent: tc.pct, BaseEjection: time.Minute}})
				for i := range tc.targets {
					require.NoError(t, c.SetTarget(Target{Addr: addr(i + 1)}))
				}
				synctest.Wait()
				rec.take()
				// Every target fails at once, from many goroutines.
				var wg sync.WaitGroup
				for i := range tc.targets {
					for range 4 {
						wg.Go(func() { observeN(c, addr(i+1), fail, 10) })
					}
				}
				wg.Wait()
				synctest.Wait()
				ejected := 0
				for _, a := range c.Targets() {
					if c.State(a) == Unhealthy {
						ejected++
					}
				}
				assert.Equal(t, tc.want, ejected)
				assert.Len(t, rec.take(), tc.want, "one event per ejection")
				// After the ejections expire, others may take their turn.
				step(time.Minute)
				for i := range tc.targets {
					observeN(c, addr(i+1), fail, 10)
				}
				synctest.Wait()
				ejected = 0
				for _, a := range c.Targets() {
					if c.State(a) == Unhealthy {
						ejected++
					}
				}
				assert.Equal(t, tc.want, ejected)
			})
		})
	}
}

func TestFlappingOutcomesAreDamped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Passive: PassiveConfig{FailureRate: 0.6, MinRequests: 10}})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a}))
		synctest.Wait()
		rec.take()
		for range 1000 {
			c.Observe(a, fail)
			c.Observe(a, ok)
			step(10 * time.Millisecond)
		}
		assert.Empty(t, rec.take())
	})
}

func TestObserveUnknownAndDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Passive: PassiveConfig{Disabled: true}})
		require.NoError(t, c.SetTarget(Target{Addr: addr(1)}))
		observeN(c, addr(1), fail, 100)
		observeN(c, addr(2), fail, 100) // not a target: ignored
		synctest.Wait()
		assert.Equal(t, Healthy, c.State(addr(1)))
		assert.Equal(t, []tr{{Healthy, "added"}}, transitions(rec.take()))
	})
}

func TestEjectionOfProbedTarget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half, Passive: PassiveConfig{BaseEjection: 10 * time.Second, HoldEjection: true}})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: time.Second}))
		step(time.Second)
		assert.Equal(t, Healthy, c.State(a))
		observeN(c, a, fail, 5)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a), "passing probes do not cut an ejection short")
		step(5 * time.Second)
		assert.Equal(t, Unhealthy, c.State(a))
		// The probe fails while ejected: the target stays down after the
		// ejection ends, with no event in between.
		p.fail.Store(true)
		step(5 * time.Second)
		assert.Equal(t, Unhealthy, c.State(a))
		assert.Equal(t, []tr{{Unknown, "added"}, {Healthy, "probe"}, {Unhealthy, "passive: consecutive failures"}}, transitions(rec.take()))
	})
}

func TestObserveAllocs(t *testing.T) {
	c, _ := newChecker(t, Config{Passive: PassiveConfig{
		FailureRate: 0.99, LatencyThreshold: time.Second, MinRequests: 1 << 30,
	}})
	a := addr(1)
	require.NoError(t, c.SetTarget(Target{Addr: a}))
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
		o    Outcome
	}{
		{"success", a, Outcome{Latency: time.Millisecond}},
		{"failure", a, Outcome{Failed: true}},
		{"slow", a, Outcome{Latency: 2 * time.Second}},
		{"not a target", addr(2), Outcome{Failed: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(1000, func() { c.Observe(tc.addr, tc.o) })
			assert.Zero(t, allocs)
		})
	}
}

func TestObserveConcurrentWithUpdates(t *testing.T) {
	c, _ := newChecker(t, Config{Passive: PassiveConfig{FailureRate: 0.5, MaxEjectedPercent: 100}})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Observe(addr(i%8+1), Outcome{Failed: (i+g)%3 == 0, Latency: time.Millisecond})
			}
		})
	}
	for i := range 200 {
		a := addr(i%8 + 1)
		if i%3 == 0 {
			c.RemoveTarget(a)
		} else {
			require.NoError(t, c.SetTarget(Target{Addr: a, Weight: uint32(i)}))
		}
		_ = c.State(a)
	}
	close(stop)
	wg.Wait()
}

func TestEjectionNotDelayedByHangingProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half, Passive: PassiveConfig{BaseEjection: 10 * time.Second}})
		hang := ProberFunc(func(ctx context.Context, _ netip.AddrPort) (Report, error) {
			<-ctx.Done()
			return Report{}, ctx.Err()
		})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: hang, Initial: Healthy, Interval: time.Second, Timeout: time.Hour}))
		step(time.Second) // the probe hangs from 0.5 s on
		observeN(c, a, fail, 5)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		step(10 * time.Second)
		assert.Equal(t, Healthy, c.State(a), "the ejection expired while the probe still hangs")
	})
}

// By default a passing probe ends an ejection (Envoy's default).
func TestUnejectOnProbeSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half, Passive: PassiveConfig{BaseEjection: time.Minute}})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: 10 * time.Second, Initial: Healthy}))
		step(time.Second)
		observeN(c, a, fail, 5)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		step(5 * time.Second) // the probe at 5 s passes
		assert.Equal(t, Healthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "added"}, {Unhealthy, "passive: consecutive failures"}, {Healthy, "probe"}}, transitions(rec.take()))
		st, _ := c.Status(a)
		assert.Equal(t, 1, st.Ejections)
		step(2 * time.Minute)
		assert.Empty(t, rec.take(), "the stopped ejection timer does not fire")
		st, _ = c.Status(a)
		assert.Equal(t, 0, st.Ejections, "forgiven after a minute in service")
	})
}

// HoldEjection keeps an ejected target out for its whole ejection time
// while its probes pass.
func TestHoldEjection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half, Passive: PassiveConfig{BaseEjection: time.Minute, HoldEjection: true}})
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: &switchProbe{}, Interval: 10 * time.Second, Initial: Healthy}))
		step(time.Second)
		observeN(c, a, fail, 5)
		synctest.Wait()
		step(30 * time.Second) // three passing probes
		assert.Equal(t, Unhealthy, c.State(a))
		step(30 * time.Second)
		assert.Equal(t, Healthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "added"}, {Unhealthy, "passive: consecutive failures"}, {Healthy, "ejection expired"}}, transitions(rec.take()))
	})
}

func TestUnhealthyTargetsDoNotUseEjectionBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half}) // one ejection at a time
		dead, bad := addr(1), addr(2)
		down := &switchProbe{}
		down.fail.Store(true)
		require.NoError(t, c.SetTarget(Target{Addr: dead, Probe: down, Interval: time.Second}))
		require.NoError(t, c.SetTarget(Target{Addr: bad, Probe: &switchProbe{}, Interval: time.Second}))
		step(time.Second)
		require.Equal(t, Unhealthy, c.State(dead))
		// Late outcomes for the dead target, then a real outlier.
		observeN(c, dead, fail, 10)
		synctest.Wait()
		observeN(c, bad, fail, 5)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(bad), "the outlier is ejected")
		st, _ := c.Status(dead)
		assert.False(t, st.Ejected)
		assert.Zero(t, st.Ejections)
	})
}

// The one report a front-end makes, Endpoint.Done, reaches the checker
// without allocating, failures with their error included.
func TestDoneThroughFollowAllocs(t *testing.T) {
	c, _ := newChecker(t, Config{Passive: PassiveConfig{ConsecutiveFailures: -1,
		FailureRate: 0.99, LatencyThreshold: time.Second, MinRequests: 1 << 30,
	}})
	pool := newPool(t, balancer.Config{}, addr(1))
	require.NoError(t, c.Follow(pool, Template{}))
	ep := pool.Endpoint(addr(1))
	boom := errors.New("boom")
	for _, err := range []error{nil, boom} {
		allocs := testing.AllocsPerRun(1000, func() {
			ep.Start()
			ep.Done(err, time.Millisecond)
		})
		assert.Zero(t, allocs, "err=%v", err)
	}
	tg := (*c.targets.Load())[addr(1)]
	tg.errMu.Lock()
	assert.Equal(t, boom, tg.passiveErr)
	tg.errMu.Unlock()
}
