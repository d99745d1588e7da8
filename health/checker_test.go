package health

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRiseFall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: time.Second, Initial: Healthy}))
		step(time.Second) // first probe at 0.5 s
		assert.Equal(t, []tr{{Healthy, "added"}}, transitions(rec.take()))
		assert.EqualValues(t, 1, p.calls.Load())

		p.fail.Store(true)
		step(time.Second)
		step(time.Second)
		assert.Equal(t, Healthy, c.State(a), "two failures are under Fall=3")
		step(time.Second)
		assert.Equal(t, Unhealthy, c.State(a))
		evs := rec.take()
		require.Len(t, evs, 1)
		assert.Equal(t, Event{Target: a, State: Unhealthy, Prev: Healthy, Reason: "probe", Err: errDown, Time: evs[0].Time}, evs[0])

		p.fail.Store(false)
		step(time.Second)
		assert.Equal(t, Unhealthy, c.State(a), "one success is under Rise=2")
		step(time.Second)
		assert.Equal(t, Healthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "probe"}}, transitions(rec.take()))
	})
}

func TestInitialState(t *testing.T) {
	for _, tc := range []struct {
		name    string
		initial State
		nilProb bool
		fail    bool
		added   State
		after   []tr // events after the first probe
		later   []tr // events after the second probe
	}{
		// Unknown targets are probed at once: the verdict comes with the
		// "added" event's first Wait, so it is checked separately below.
		{name: "unknown waits for a success", initial: Unknown, added: Unknown, after: nil},
		{name: "unknown waits for a failure", initial: Unknown, fail: true, added: Unknown, after: nil},
		{name: "healthy until fall", initial: Healthy, fail: true, added: Healthy},
		{name: "unhealthy until rise", initial: Unhealthy, added: Unhealthy, later: []tr{{Healthy, "probe"}}},
		{name: "passive only counts as healthy", initial: Unknown, nilProb: true, added: Healthy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, rec := newChecker(t, Config{Rand: half})
				p := &switchProbe{}
				p.fail.Store(tc.fail)
				tg := Target{Addr: addr(1), Probe: p, Interval: time.Second, Initial: tc.initial}
				if tc.nilProb {
					tg.Probe = nil
				}
				require.NoError(t, c.SetTarget(tg))
				synctest.Wait()
				added := []tr{{tc.added, "added"}}
				if tc.initial == Unknown && !tc.nilProb {
					verdict := Healthy
					if tc.fail {
						verdict = Unhealthy
					}
					added = append(added, tr{verdict, "probe"})
				}
				assert.Equal(t, added, transitions(rec.take()))
				if len(added) == 1 {
					assert.Equal(t, tc.added, c.State(addr(1)))
				}
				step(time.Second)
				assert.Equal(t, tc.after, transitions(rec.take()))
				step(time.Second)
				assert.Equal(t, tc.later, transitions(rec.take()))
			})
		})
	}
}

func TestInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		require.NoError(t, c.SetTarget(Target{Addr: addr(1), Probe: p, Interval: 2 * time.Second}))
		step(time.Second) // first probe at 1 s, then every 2 s
		assert.EqualValues(t, 1, p.calls.Load())
		step(20 * time.Second)
		assert.EqualValues(t, 11, p.calls.Load())
	})
}

// lockedRand is a seeded, concurrency-safe Rand.
func lockedRand(seed uint64) func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

func TestJitterSpread(t *testing.T) {
	const (
		n        = 200
		interval = 10 * time.Second
		jitter   = time.Second
	)
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: lockedRand(1)})
		start := time.Now()
		var mu sync.Mutex
		times := make(map[netip.AddrPort][]time.Duration)
		probe := ProberFunc(func(_ context.Context, a netip.AddrPort) (Report, error) {
			mu.Lock()
			times[a] = append(times[a], time.Since(start))
			mu.Unlock()
			return Report{}, nil
		})
		for i := range n {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80)
			require.NoError(t, c.SetTarget(Target{Addr: a, Probe: probe, Interval: interval, Jitter: jitter, Initial: Healthy}))
		}
		step(5 * interval)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, times, n)
		var firstMin, firstMax = interval, time.Duration(0)
		var gapMin, gapMax = 2 * interval, time.Duration(0)
		for _, ts := range times {
			require.GreaterOrEqual(t, len(ts), 4)
			firstMin, firstMax = min(firstMin, ts[0]), max(firstMax, ts[0])
			for i := 1; i < len(ts); i++ {
				g := ts[i] - ts[i-1]
				gapMin, gapMax = min(gapMin, g), max(gapMax, g)
			}
		}
		// First probes spread over the whole interval, not in lockstep.
		assert.Less(t, firstMin, interval/10)
		assert.Greater(t, firstMax, interval*9/10)
		assert.Less(t, firstMax, interval)
		// Later delays stay within interval ± jitter and use its range.
		assert.GreaterOrEqual(t, gapMin, interval-jitter)
		assert.LessOrEqual(t, gapMax, interval+jitter)
		assert.Less(t, gapMin, interval-jitter/2)
		assert.Greater(t, gapMax, interval+jitter/2)
	})
}

func TestDownInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		p.fail.Store(true)
		require.NoError(t, c.SetTarget(Target{Addr: addr(1), Probe: p, Interval: 10 * time.Second, DownInterval: time.Second, Initial: Healthy}))
		step(5 * time.Second) // probe 1 at 5 s
		step(20 * time.Second)
		// 5 s, 15 s, 25 s: the third failure makes it unhealthy.
		assert.Equal(t, Unhealthy, c.State(addr(1)))
		assert.EqualValues(t, 3, p.calls.Load())
		step(10 * time.Second)
		assert.EqualValues(t, 13, p.calls.Load(), "one probe a second while down")
		p.fail.Store(false)
		step(2 * time.Second)
		assert.Equal(t, Healthy, c.State(addr(1)))
		assert.EqualValues(t, 15, p.calls.Load())
		step(10 * time.Second)
		assert.EqualValues(t, 16, p.calls.Load(), "back to the slow interval")
	})
}

func TestProbeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		hang := ProberFunc(func(ctx context.Context, _ netip.AddrPort) (Report, error) {
			<-ctx.Done()
			return Report{}, ctx.Err()
		})
		require.NoError(t, c.SetTarget(Target{Addr: addr(1), Probe: hang, Interval: 4 * time.Second, Timeout: time.Second, Initial: Healthy, Fall: 1}))
		synctest.Wait()
		rec.take()
		step(2500 * time.Millisecond) // probe starts at 2 s, times out at 3 s
		assert.Empty(t, rec.take())
		step(time.Second)
		evs := rec.take()
		require.Len(t, evs, 1)
		assert.Equal(t, Unhealthy, evs[0].State)
		assert.ErrorIs(t, evs[0].Err, context.DeadlineExceeded)
		st, ok := c.Status(addr(1))
		require.True(t, ok)
		assert.ErrorIs(t, st.LastErr, context.DeadlineExceeded)
	})
}

func TestSetTargetReplaceAndRemove(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		p.fail.Store(true)
		a, b := addr(2), addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: time.Second}))
		require.NoError(t, c.SetTarget(Target{Addr: b, Probe: &switchProbe{}, Interval: time.Second, Initial: Healthy}))
		assert.Equal(t, []netip.AddrPort{b, a}, c.Targets())
		step(time.Second)
		assert.Equal(t, Unhealthy, c.State(a))
		rec.take()

		// Replacing keeps the state and applies the new interval at once.
		p2 := &switchProbe{}
		p2.fail.Store(true)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p2, Interval: 10 * time.Second}))
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		assert.Empty(t, rec.take(), "replacing is not a transition")
		step(20 * time.Second)
		assert.EqualValues(t, 2, p2.calls.Load(), "new probe on the new interval (first at 5 s, then 15 s)")

		assert.True(t, c.RemoveTarget(a))
		assert.False(t, c.RemoveTarget(a))
		synctest.Wait()
		assert.Equal(t, []tr{{Unknown, "removed"}}, transitions(rec.take()))
		assert.Equal(t, []netip.AddrPort{b}, c.Targets())
		assert.Equal(t, Unknown, c.State(a))
		_, ok := c.Status(a)
		assert.False(t, ok)
		calls := p2.calls.Load()
		step(30 * time.Second)
		assert.Equal(t, calls, p2.calls.Load(), "a removed target is not probed")
	})
}

func TestSetTargetInvalid(t *testing.T) {
	c, _ := newChecker(t, Config{})
	for _, tc := range []struct {
		name string
		t    Target
	}{
		{"no address", Target{}},
		{"negative interval", Target{Addr: addr(1), Interval: -1}},
		{"negative timeout", Target{Addr: addr(1), Timeout: -1}},
		{"negative rise", Target{Addr: addr(1), Rise: -1}},
		{"initial draining", Target{Addr: addr(1), Initial: Draining}},
		{"initial out of range", Target{Addr: addr(1), Initial: 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Error(t, c.SetTarget(tc.t))
		})
	}
	assert.Empty(t, c.Targets())
}

func TestConfigInvalid(t *testing.T) {
	for _, p := range []PassiveConfig{
		{FailureRate: 1.5},
		{LatencyRate: -1},
		{MaxEjectedPercent: 101},
		{Window: -time.Second},
		{Buckets: -1},
		{Buckets: 1 << 16},
	} {
		_, err := New(Config{Passive: p})
		assert.Error(t, err, "%+v", p)
	}
}

func TestAgent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: time.Second, Initial: Healthy, Weight: 10}))
		step(time.Second)
		rec.take()

		for _, tc := range []struct {
			words  string
			state  State
			weight uint32 // Event.Weight; 0: no event expected... see want
			want   []Event
		}{
			{words: "drain", want: []Event{{State: Draining, Prev: Healthy, Reason: "agent"}}},
			{words: "drain # still", want: nil},
			{words: "ready 50%", want: []Event{{State: Healthy, Prev: Draining, Weight: 5, Reason: "agent"}}},
			{words: "weight=7", want: []Event{{State: Healthy, Prev: Healthy, Weight: 7, Reason: "agent"}}},
			{words: "down", want: []Event{{State: Unhealthy, Prev: Healthy, Reason: "agent"}}},
			{words: "up", want: []Event{{State: Healthy, Prev: Unhealthy, Reason: "agent"}}},
			{words: "maint", want: []Event{{State: Draining, Prev: Healthy, Reason: "agent"}}},
			{words: "up 0%", want: nil}, // weight 0 drains, as in HAProxy
			{words: "100%", want: []Event{{State: Healthy, Prev: Draining, Weight: 10, Reason: "agent"}}},
		} {
			rep, err := ParseAgent(tc.words)
			require.NoError(t, err)
			p.setReport(rep)
			step(time.Second)
			evs := rec.take()
			for i := range evs {
				evs[i].Target, evs[i].Time = netip.AddrPort{}, time.Time{}
			}
			assert.Equal(t, tc.want, evs, tc.words)
		}
		st, _ := c.Status(a)
		assert.Equal(t, Status{State: Healthy, Probe: Healthy, Agent: AgentUp, Weight: 10}, st)
	})
}

func TestFlappingProbeIsDamped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		var n int
		flap := ProberFunc(func(context.Context, netip.AddrPort) (Report, error) {
			n++
			if n%2 == 0 {
				return Report{}, errDown
			}
			return Report{}, nil
		})
		require.NoError(t, c.SetTarget(Target{Addr: addr(1), Probe: flap, Interval: time.Second, Initial: Healthy}))
		synctest.Wait()
		rec.take()
		step(100 * time.Second)
		assert.Equal(t, 100, n)
		assert.Empty(t, rec.take(), "alternating results never reach rise or fall")
		assert.Equal(t, Healthy, c.State(addr(1)))
	})
}

func TestCloseStopsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(Config{Logger: quiet, Rand: half})
		require.NoError(t, err)
		started := make(chan struct{})
		var once sync.Once
		hang := ProberFunc(func(ctx context.Context, _ netip.AddrPort) (Report, error) {
			once.Do(func() { close(started) })
			<-ctx.Done()
			return Report{}, ctx.Err()
		})
		for i := range 5 {
			require.NoError(t, c.SetTarget(Target{Addr: addr(i + 1), Probe: hang, Timeout: time.Hour, Interval: time.Hour}))
		}
		require.NoError(t, c.SetTarget(Target{Addr: addr(9)}))
		c.Subscribe(func(Event) {})
		<-started
		require.NoError(t, c.Close())
		require.NoError(t, c.Close())
		assert.ErrorIs(t, c.SetTarget(Target{Addr: addr(7)}), ErrClosed)
		c.Observe(addr(9), Outcome{Failed: true})
		// synctest.Test fails if any goroutine of the bubble is left.
	})
}

func TestSubscribeOrderAndUnsubscribe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half})
		var got []string
		var unsub func()
		unsub = c.Subscribe(func(e Event) {
			got = append(got, e.Target.String()+" "+e.State.String())
			// Callbacks may call the checker.
			_ = c.State(e.Target)
			_ = c.Targets()
			if e.Target == addr(3) {
				unsub()
			}
		})
		for i := 1; i <= 4; i++ {
			require.NoError(t, c.SetTarget(Target{Addr: addr(i), Initial: Healthy}))
		}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.1:80 healthy", "198.18.0.2:80 healthy", "198.18.0.3:80 healthy"}, got)
		unsub() // idempotent
	})
}

func TestProbeErrorIsWrappedInEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		sentinel := errors.New("boom")
		require.NoError(t, c.SetTarget(Target{Addr: addr(1), Interval: time.Second,
			Probe: ProberFunc(func(context.Context, netip.AddrPort) (Report, error) { return Report{}, sentinel })}))
		step(time.Second)
		evs := rec.take()
		require.Len(t, evs, 2)
		assert.ErrorIs(t, evs[1].Err, sentinel)
	})
}

func TestDefaults(t *testing.T) {
	got := Target{Addr: addr(1)}.withDefaults()
	assert.Equal(t, Target{Addr: addr(1), Interval: 5 * time.Second, Timeout: 2 * time.Second,
		DownInterval: 5 * time.Second, Rise: 2, Fall: 3, Weight: 1}, got)
	got = Target{Addr: addr(1), Interval: time.Second, Jitter: -1}.withDefaults()
	assert.Equal(t, time.Second, got.DownInterval, "DownInterval follows Interval")
	assert.Equal(t, 2*time.Second, got.Timeout)

	p, err := PassiveConfig{}.params()
	require.NoError(t, err)
	assert.Equal(t, passiveParams{consecutive: 5, bucketNanos: int64(time.Second), buckets: 10,
		minRequests: 20, minSlow: 10, slowRate: 0.5, base: 30 * time.Second, maxEj: 300 * time.Second,
		maxEjectPct: 10, probeUneject: true}, p)
	p, err = PassiveConfig{ConsecutiveFailures: -1, BaseEjection: time.Hour}.params()
	require.NoError(t, err)
	assert.Zero(t, p.consecutive)
	assert.Equal(t, time.Hour, p.maxEj, "MaxEjection is raised to BaseEjection")
}

func TestJittered(t *testing.T) {
	for _, tc := range []struct {
		rand   float64
		jitter time.Duration
		want   time.Duration
	}{
		{0.5, 0, 10 * time.Second},
		{0, 0, 9 * time.Second}, // a tenth of the delay by default
		{0.75, 0, 10500 * time.Millisecond},
		{0, -1, 10 * time.Second}, // disabled
		{0, 3 * time.Second, 7 * time.Second},
		{0, time.Minute, 5 * time.Second}, // capped at half the delay
	} {
		c := &Checker{rand: func() float64 { return tc.rand }}
		assert.Equal(t, tc.want, c.jittered(10*time.Second, &Target{Jitter: tc.jitter}), "%+v", tc)
	}
}

func TestFastInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Initial: Healthy,
			Interval: 10 * time.Second, FastInterval: time.Second, DownInterval: 5 * time.Second}))
		step(5 * time.Second) // first probe at 5 s passes
		p.fail.Store(true)
		step(10 * time.Second) // 15 s: first failure; then one a second
		assert.Equal(t, Healthy, c.State(a))
		step(2 * time.Second) // 16 s, 17 s: third failure
		assert.Equal(t, Unhealthy, c.State(a))
		assert.EqualValues(t, 4, p.calls.Load())
		step(5 * time.Second) // 22 s: down interval
		assert.EqualValues(t, 5, p.calls.Load())
		p.fail.Store(false)
		step(5 * time.Second) // 27 s passes: one of Rise, next in a second
		assert.Equal(t, Unhealthy, c.State(a))
		step(time.Second)
		assert.Equal(t, Healthy, c.State(a))
		assert.EqualValues(t, 7, p.calls.Load())
		step(9 * time.Second)
		assert.EqualValues(t, 7, p.calls.Load(), "back to Interval")
		step(time.Second)
		assert.EqualValues(t, 8, p.calls.Load())
	})
}

// TestEventChains drives many targets through random probe results,
// agent words and passive failures, and checks that each target's events
// arrive in order: every event's Prev is the State of the one before.
func TestEventChains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := lockedRand(7)
		c, _ := newChecker(t, Config{Rand: r, Passive: PassiveConfig{BaseEjection: 3 * time.Second, MaxEjectedPercent: 50}})
		var mu sync.Mutex
		chains := map[netip.AddrPort][]Event{}
		c.Subscribe(func(e Event) {
			mu.Lock()
			chains[e.Target] = append(chains[e.Target], e)
			mu.Unlock()
		})
		words := []Report{{}, {Agent: AgentDrain}, {Agent: AgentUp}, {Agent: AgentDown}, {HasWeight: true, Weight: 50, WeightPercent: true}}
		probe := ProberFunc(func(context.Context, netip.AddrPort) (Report, error) {
			rep := words[int(r()*float64(len(words)))]
			if r() < 0.4 {
				return rep, errDown
			}
			return rep, nil
		})
		const n = 8
		for i := range n {
			require.NoError(t, c.SetTarget(Target{Addr: addr(i + 1), Probe: probe, Interval: time.Second, Rise: 1, Fall: 1, Weight: 10}))
		}
		for range 200 {
			c.Observe(addr(int(r()*n)+1), Outcome{Failed: true})
			step(100 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		events := 0
		for a, evs := range chains {
			require.Equal(t, "added", evs[0].Reason)
			for i := 1; i < len(evs); i++ {
				require.Equal(t, evs[i-1].State, evs[i].Prev, "%s event %d: %+v after %+v", a, i, evs[i], evs[i-1])
				require.False(t, evs[i].Time.Before(evs[i-1].Time))
				require.True(t, evs[i].State != evs[i].Prev || evs[i].Weight != 0, "an event with no transition: %+v", evs[i])
			}
			events += len(evs)
		}
		assert.Greater(t, events, 30, "the test exercised many transitions")
	})
}

func TestSetTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{Rand: half})
		p := &switchProbe{}
		p.fail.Store(true)
		require.NoError(t, c.SetTargets([]Target{
			{Addr: addr(1), Probe: p, Interval: time.Second},
			{Addr: addr(2), Initial: Healthy},
			{Addr: addr(3), Initial: Healthy, Probe: p},
		}))
		step(time.Second)
		assert.Equal(t, Unhealthy, c.State(addr(1)))
		rec.take()

		// A reload: 1 is kept (with its state), 2 goes, 4 comes.
		require.NoError(t, c.SetTargets([]Target{
			{Addr: addr(4), Initial: Healthy},
			{Addr: addr(1), Probe: p, Interval: time.Minute},
			{Addr: addr(3), Initial: Healthy, Probe: p},
		}))
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{addr(1), addr(3), addr(4)}, c.Targets())
		assert.Equal(t, Unhealthy, c.State(addr(1)))
		evs := rec.take()
		require.Len(t, evs, 2)
		assert.Equal(t, Event{Target: addr(2), State: Unknown, Prev: Healthy, Reason: "removed", Time: evs[0].Time}, evs[0])
		assert.Equal(t, Event{Target: addr(4), State: Healthy, Prev: Unknown, Reason: "added", Time: evs[1].Time}, evs[1])

		// Invalid sets change nothing.
		assert.ErrorContains(t, c.SetTargets([]Target{{Addr: addr(5)}, {Addr: addr(5)}}), "duplicate")
		assert.Error(t, c.SetTargets([]Target{{Addr: addr(5)}, {}}))
		assert.Equal(t, []netip.AddrPort{addr(1), addr(3), addr(4)}, c.Targets())

		require.NoError(t, c.SetTargets(nil))
		synctest.Wait()
		assert.Empty(t, c.Targets())
		assert.Len(t, rec.take(), 3)
		require.NoError(t, c.Close())
		assert.ErrorIs(t, c.SetTargets(nil), ErrClosed)
	})
}
