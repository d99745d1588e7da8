package health

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ready(p *balancer.Pool) []netip.AddrPort {
	var out []netip.AddrPort
	for _, w := range p.Snapshot().Ready {
		out = append(out, w.Endpoint.Addr())
	}
	return out
}

func newPool(t *testing.T, cfg balancer.Config, addrs ...netip.AddrPort) *balancer.Pool {
	if cfg.Builder == nil {
		cfg.Builder = maglev.Builder{Size: 1009}
	}
	cfg.Logger = quiet
	p, err := balancer.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	var bs []balancer.Backend
	for _, a := range addrs {
		bs = append(bs, balancer.Backend{Addr: a})
	}
	require.NoError(t, p.Set(bs))
	return p
}

func weightOf(p *balancer.Pool, a netip.AddrPort) float64 {
	for _, w := range p.Snapshot().Ready {
		if w.Endpoint.Addr() == a {
			return w.Weight
		}
	}
	return 0
}

func TestFollow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2, a3 := addr(1), addr(2), addr(3)
		pool := newPool(t, balancer.Config{SlowStart: 10 * time.Second, Name: "web"}, a1, a2, a3)
		c, rec := newChecker(t, Config{Rand: half})
		probes := map[netip.AddrPort]*switchProbe{a1: {}, a2: {}, a3: {}, addr(4): {}}
		tmpl := Template{
			Probe:    ProberFunc(func(ctx context.Context, a netip.AddrPort) (Report, error) { return probes[a].Probe(ctx, a) }),
			Interval: time.Second,
			Override: func(b balancer.Backend, t *Target) { t.Weight = 10 },
		}
		require.NoError(t, c.Follow(pool, tmpl))
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, c.Targets(), "every member is a target, with no other call")
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, ready(pool), "the first probes run at once")
		assert.Equal(t, 1.0, weightOf(pool, a1), "a first verdict gets the full weight: no slow start")
		evs := rec.take()
		require.NotEmpty(t, evs)
		assert.Equal(t, []string{"web"}, evs[0].Pools, "events name the pool")

		// a2 fails: it leaves the ready set after Fall probes.
		probes[a2].fail.Store(true)
		step(3 * time.Second)
		assert.Equal(t, []netip.AddrPort{a1, a3}, ready(pool))
		assert.Equal(t, balancer.Unhealthy, pool.Endpoint(a2).Health())

		// It recovers after Rise probes and re-enters, slow-starting.
		probes[a2].fail.Store(false)
		step(2 * time.Second)
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, ready(pool))
		assert.Less(t, weightOf(pool, a2), 1.0, "slow start ramps the returning backend")

		// An agent drains a3: it stays healthy but takes no new work.
		probes[a3].setReport(Report{Agent: AgentDrain})
		step(time.Second)
		assert.True(t, pool.Endpoint(a3).Draining())
		assert.True(t, pool.Endpoint(a3).Healthy())
		assert.Equal(t, []netip.AddrPort{a1, a2}, ready(pool))

		// "ready 50%" undrains it at half its weight of 10 (the override).
		probes[a3].setReport(Report{Agent: AgentUp, HasWeight: true, Weight: 50, WeightPercent: true})
		step(time.Second)
		assert.False(t, pool.Endpoint(a3).Draining())
		assert.EqualValues(t, 5, pool.Endpoint(a3).Weight())

		// Passive ejection through Endpoint.Done, the one report a
		// front-end makes; the event carries the error.
		boom := errors.New("connection refused")
		ep := pool.Endpoint(a1)
		for range 5 {
			ep.Start()
			ep.Done(boom, time.Millisecond)
		}
		synctest.Wait()
		assert.False(t, pool.Endpoint(a1).Healthy())
		var ejected *Event
		for _, ev := range rec.take() {
			if ev.Target == a1 && ev.State == Unhealthy {
				ejected = &ev
			}
		}
		require.NotNil(t, ejected)
		assert.Equal(t, "passive: consecutive failures", ejected.Reason)
		assert.Equal(t, boom, ejected.Err)

		// A member added to the pool is probed and, once healthy, picked:
		// no other call.
		a4 := addr(4)
		require.NoError(t, pool.Add(balancer.Backend{Addr: a4}))
		assert.Equal(t, balancer.HealthUnknown, pool.Endpoint(a4).Health(), "joins unknown")
		assert.NotContains(t, ready(pool), a4)
		synctest.Wait()
		assert.Contains(t, c.Targets(), a4)
		assert.Contains(t, ready(pool), a4)

		// A member removed from the pool stops being checked.
		require.True(t, pool.Remove(a3))
		synctest.Wait()
		assert.NotContains(t, c.Targets(), a3)

		// After Unfollow, the pool no longer follows.
		require.NoError(t, c.Unfollow(pool))
		assert.ErrorIs(t, c.Unfollow(pool), ErrNotFollowed)
		assert.Nil(t, pool.Observer())
		assert.Empty(t, c.Targets())
		require.NoError(t, pool.Add(balancer.Backend{Addr: addr(5)}))
		assert.True(t, pool.Endpoint(addr(5)).Healthy(), "joins healthy without a checker")
	})
}

// Follow again replaces the template and keeps state; one checker
// follows two pools sharing a member, whose state reaches both.
func TestFollowRetemplateAndSharedMembers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2, a3 := addr(1), addr(2), addr(3)
		web := newPool(t, balancer.Config{Name: "web"}, a1, a2)
		api := newPool(t, balancer.Config{Name: "api"}, a2, a3)
		c, _ := newChecker(t, Config{Rand: half})
		probe := &switchProbe{}
		require.NoError(t, c.Follow(web, Template{Probe: probe, Interval: time.Second}))
		require.NoError(t, c.Follow(api, Template{Probe: probe, Interval: time.Second}))
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, c.Targets())
		assert.Len(t, c.Followed(), 2)
		assert.Equal(t, []netip.AddrPort{a1, a2}, ready(web))
		assert.Equal(t, []netip.AddrPort{a2, a3}, ready(api))

		probe.fail.Store(true)
		step(3 * time.Second)
		assert.Empty(t, ready(web))
		assert.Empty(t, ready(api), "a2's state reaches both pools")

		// A new template (Fall 1, longer interval) keeps the state.
		require.NoError(t, c.Follow(web, Template{Probe: probe, Interval: 5 * time.Second, Fall: 1}))
		assert.Equal(t, Unhealthy, c.State(a1), "state kept")
		probe.fail.Store(false)
		step(10 * time.Second)
		assert.Equal(t, []netip.AddrPort{a1, a2}, ready(web))

		// web leaves: a2 stays checked for api, a1 goes.
		require.NoError(t, c.Unfollow(web))
		assert.Equal(t, []netip.AddrPort{a2, a3}, c.Targets())
		require.Error(t, c.Follow(api, Template{Probe: probe, Rise: -1}), "invalid template")
	})
}

// Members that are also set with SetTarget are kept when they leave the
// pool.
func TestFollowKeepsStandaloneTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2 := addr(1), addr(2)
		pool := newPool(t, balancer.Config{}, a1, a2)
		c, _ := newChecker(t, Config{Rand: half})
		require.NoError(t, c.SetTarget(Target{Addr: a1, Probe: &switchProbe{}, Initial: Healthy}))
		require.NoError(t, c.Follow(pool, Template{Probe: &switchProbe{}}))
		synctest.Wait()
		require.True(t, pool.Remove(a1))
		require.True(t, pool.Remove(a2))
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{a1}, c.Targets())
		require.NoError(t, c.Close())
		assert.Nil(t, pool.Observer(), "Close removes the checker from its pools")
		assert.ErrorIs(t, c.Follow(pool, Template{}), ErrClosed)
	})
}

// Template.Initial Healthy serves at once; passive-only templates (no
// probe) too.
func TestFollowInitialStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1 := addr(1)
		p1 := newPool(t, balancer.Config{}, a1)
		p2 := newPool(t, balancer.Config{}, addr(2))
		p3 := newPool(t, balancer.Config{}, addr(3))
		c, _ := newChecker(t, Config{Rand: half})
		hang := ProberFunc(func(ctx context.Context, _ netip.AddrPort) (Report, error) {
			<-ctx.Done()
			return Report{}, ctx.Err()
		})
		require.NoError(t, c.Follow(p1, Template{Probe: hang, Initial: Healthy, Timeout: time.Hour}))
		require.NoError(t, c.Follow(p2, Template{}))
		require.NoError(t, c.Follow(p3, Template{Probe: hang, Initial: Unhealthy, Timeout: time.Hour}))
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{a1}, ready(p1))
		assert.Equal(t, []netip.AddrPort{addr(2)}, ready(p2))
		assert.Empty(t, ready(p3))
		require.NoError(t, p1.Add(balancer.Backend{Addr: addr(9)}))
		assert.True(t, p1.Endpoint(addr(9)).Healthy(), "joins as the template's Initial says")
	})
}

// Members set right after Follow, before its goroutine runs, are not
// missed.
func TestFollowThenSet(t *testing.T) {
	for range 50 {
		synctest.Test(t, func(t *testing.T) {
			pool := newPool(t, balancer.Config{})
			c, _ := newChecker(t, Config{Rand: half})
			require.NoError(t, c.Follow(pool, Template{Probe: &switchProbe{}}))
			require.NoError(t, pool.Set([]balancer.Backend{{Addr: addr(1)}}))
			synctest.Wait()
			assert.Equal(t, []netip.AddrPort{addr(1)}, ready(pool))
		})
	}
}
