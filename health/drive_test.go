package health

import (
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

func TestDrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2, a3, stranger := addr(1), addr(2), addr(3), addr(4)
		pool := newPool(t, balancer.Config{SlowStart: 10 * time.Second}, a1, a2, a3)
		c, _ := newChecker(t, Config{Rand: half})
		probes := map[netip.AddrPort]*switchProbe{a1: {}, a2: {}, a3: {}, stranger: {}}
		for _, a := range []netip.AddrPort{a1, a2, a3, stranger} {
			require.NoError(t, c.SetTarget(Target{Addr: a, Probe: probes[a], Interval: time.Second, Initial: Healthy, Weight: 10}))
		}
		stop := c.Drive(pool)
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, ready(pool))

		// a2 fails: it leaves the ready set after Fall probes.
		probes[a2].fail.Store(true)
		step(3 * time.Second)
		assert.Equal(t, []netip.AddrPort{a1, a3}, ready(pool))
		assert.False(t, pool.Endpoint(a2).Healthy())

		// It recovers after Rise probes and re-enters, slow-starting.
		probes[a2].fail.Store(false)
		step(2 * time.Second)
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, ready(pool))
		w := pool.Snapshot().Ready[1]
		assert.Less(t, w.Weight, 1.0, "slow start ramps the returning backend")

		// An agent drains a3: it stays healthy but takes no new work.
		probes[a3].setReport(Report{Agent: AgentDrain})
		step(time.Second)
		assert.True(t, pool.Endpoint(a3).Draining())
		assert.True(t, pool.Endpoint(a3).Healthy())
		assert.Equal(t, []netip.AddrPort{a1, a2}, ready(pool))

		// "ready 50%" undrains it at half its configured weight of 10.
		probes[a3].setReport(Report{Agent: AgentUp, HasWeight: true, Weight: 50, WeightPercent: true})
		step(time.Second)
		assert.False(t, pool.Endpoint(a3).Draining())
		assert.EqualValues(t, 5, pool.Endpoint(a3).Weight())

		// Passive ejection takes a1 out.
		observeN(c, a1, fail, 5)
		synctest.Wait()
		assert.False(t, pool.Endpoint(a1).Healthy())

		// After stop, the pool no longer follows.
		stop()
		stop()
		probes[a2].fail.Store(true)
		step(5 * time.Second)
		assert.Equal(t, Unhealthy, c.State(a2))
		assert.True(t, pool.Endpoint(a2).Healthy())
	})
}

func TestDriveAppliesCurrentState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2, a3 := addr(1), addr(2), addr(3)
		pool := newPool(t, balancer.Config{}, a1, a2, a3)
		c, _ := newChecker(t, Config{Rand: half})
		require.NoError(t, c.SetTarget(Target{Addr: a1, Initial: Healthy, Probe: &switchProbe{}}))
		require.NoError(t, c.SetTarget(Target{Addr: a2, Initial: Unhealthy, Probe: &switchProbe{}}))
		require.NoError(t, c.SetTarget(Target{Addr: a3, Probe: &switchProbe{}})) // Unknown: waits for a probe
		defer c.Drive(pool)()
		assert.Equal(t, []netip.AddrPort{a1}, ready(pool), "at once, before any probe")
		step(DefaultInterval)
		assert.Equal(t, []netip.AddrPort{a1, a3}, ready(pool), "a3 passed its first probe; a2 needs two")
		step(DefaultInterval)
		assert.Equal(t, []netip.AddrPort{a1, a2, a3}, ready(pool))

		// A target added later is applied too; a removed one is left as is.
		a4 := addr(4)
		require.NoError(t, pool.Add(balancer.Backend{Addr: a4}))
		require.NoError(t, c.SetTarget(Target{Addr: a4, Probe: &switchProbe{}}))
		synctest.Wait()
		assert.False(t, pool.Endpoint(a4).Healthy(), "unknown until probed")
		c.RemoveTarget(a1)
		synctest.Wait()
		assert.True(t, pool.Endpoint(a1).Healthy())
	})
}

func TestDriveCorrectsMembersAddedLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1, a2 := addr(1), addr(2)
		pool := newPool(t, balancer.Config{}, a1)
		c, _ := newChecker(t, Config{Rand: half})
		require.NoError(t, c.SetTarget(Target{Addr: a1, Initial: Healthy, Probe: &switchProbe{}}))
		require.NoError(t, c.SetTarget(Target{Addr: a2, Initial: Unhealthy, Probe: &switchProbe{}}))
		stop := c.Drive(pool)
		// a2 joins the pool after its target: the pool takes it as healthy,
		// Drive corrects it without waiting for a2's next event.
		require.NoError(t, pool.Add(balancer.Backend{Addr: a2}))
		synctest.Wait()
		assert.False(t, pool.Endpoint(a2).Healthy())
		assert.Equal(t, []netip.AddrPort{a1}, ready(pool))
		stop()
		// After stop, nothing corrects the pool.
		require.True(t, pool.Remove(a2))
		require.NoError(t, pool.Add(balancer.Backend{Addr: a2}))
		synctest.Wait()
		assert.Equal(t, []netip.AddrPort{a1, a2}, ready(pool))
	})
}
