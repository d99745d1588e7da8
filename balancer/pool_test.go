package balancer_test

import (
	"errors"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/maglev"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// firstPicker always picks the first ready endpoint; builds counts Build
// calls so tests can see when the pool rebuilt.
type countingBuilder struct{ builds atomic.Int64 }

func (b *countingBuilder) Build(ready []balancer.Weighted) balancer.Picker {
	b.builds.Add(1)
	ep := ready[0].Endpoint
	return balancer.PickerFunc(func(balancer.PickInfo) (*balancer.Endpoint, error) { return ep, nil })
}

func addr(i int) netip.AddrPort { return balancertest.Addr(i) }

func backends(n int) []balancer.Backend {
	bs := make([]balancer.Backend, n)
	for i := range bs {
		bs[i] = balancer.Backend{Addr: addr(i)}
	}
	return bs
}

func readyAddrs(s *balancer.Snapshot) []netip.AddrPort {
	var out []netip.AddrPort
	for _, w := range s.Ready {
		out = append(out, w.Endpoint.Addr())
	}
	return out
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  balancer.Config
	}{
		{"no builder", balancer.Config{}},
		{"negative slow start", balancer.Config{Builder: &countingBuilder{}, SlowStart: -1}},
		{"min weight above 1", balancer.Config{Builder: &countingBuilder{}, SlowStartMinWeight: 1.5}},
		{"panic threshold above 1", balancer.Config{Builder: &countingBuilder{}, PanicThreshold: 2}},
		{"zone min ready negative", balancer.Config{Builder: &countingBuilder{}, LocalZoneMinReady: -0.1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := balancer.New(tt.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "balancer:")
		})
	}
	_, err := balancer.New(balancer.Config{})
	assert.ErrorIs(t, err, balancer.ErrNoBuilder)
}

func TestEmptyPoolPicksErrNoBackend(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}})
	_, err := p.Pick(balancer.PickInfo{})
	require.ErrorIs(t, err, balancer.ErrNoBackend)
	require.NotNil(t, p.Snapshot().Picker)

	require.NoError(t, p.Set(backends(1)))
	require.True(t, p.Remove(addr(0)))
	_, err = p.Pick(balancer.PickInfo{})
	require.ErrorIs(t, err, balancer.ErrNoBackend)
}

func TestSetRejectsBadInputAndKeepsState(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}})
	require.NoError(t, p.Set(backends(2)))
	err := p.Set([]balancer.Backend{{Addr: addr(0)}, {Addr: addr(0)}})
	require.ErrorContains(t, err, "duplicate")
	require.Error(t, p.Set([]balancer.Backend{{}}))
	require.Error(t, p.Add(balancer.Backend{}))
	assert.Equal(t, []netip.AddrPort{addr(0), addr(1)}, readyAddrs(p.Snapshot()))
}

func TestRebuildOnlyOnChange(t *testing.T) {
	b := &countingBuilder{}
	p := balancer.MustNew(balancer.Config{Builder: b})
	require.NoError(t, p.Set(backends(3)))
	require.EqualValues(t, 1, b.builds.Load())
	v := p.Snapshot().Version

	// No-ops: same membership, same health, unknown address.
	require.NoError(t, p.Set(backends(3)))
	assert.False(t, p.SetHealthy(addr(0), true))
	assert.False(t, p.SetHealthy(addr(99), false))
	assert.False(t, p.SetDraining(addr(99), true))
	assert.False(t, p.SetWeight(addr(0), 1))
	assert.EqualValues(t, 1, b.builds.Load())
	assert.Equal(t, v, p.Snapshot().Version)

	old := p.Snapshot()
	assert.True(t, p.SetHealthy(addr(1), false))
	assert.EqualValues(t, 2, b.builds.Load())
	select {
	case <-old.Changed():
	default:
		t.Fatal("old snapshot's Changed channel not closed after a change")
	}
	assert.Equal(t, []netip.AddrPort{addr(0), addr(2)}, readyAddrs(p.Snapshot()))
}

func TestMemberChangePublishesWithoutRebuild(t *testing.T) {
	b := &countingBuilder{}
	p := balancer.MustNew(balancer.Config{Builder: b})
	require.NoError(t, p.Set(backends(3)))
	require.True(t, p.SetHealthy(addr(2), false))
	builds, old := b.builds.Load(), p.Snapshot()
	require.Len(t, old.Members, 3)

	// Removing a member that is not ready leaves the ready set alone: a
	// new snapshot names the members, the picker is reused.
	require.True(t, p.Remove(addr(2)))
	s := p.Snapshot()
	assert.Equal(t, builds, b.builds.Load(), "no rebuild for a membership-only change")
	assert.Equal(t, old.Version+1, s.Version)
	assert.Equal(t, []*balancer.Endpoint{p.Endpoint(addr(0)), p.Endpoint(addr(1))}, s.Members)
	assert.Equal(t, readyAddrs(old), readyAddrs(s))
	select {
	case <-old.Changed():
	default:
		t.Fatal("membership change did not close Changed")
	}

	// Draining a member that is not ready publishes too.
	require.True(t, p.SetHealthy(addr(1), false))
	v := p.Snapshot().Version
	builds = b.builds.Load()
	require.True(t, p.SetDraining(addr(1), true))
	assert.Equal(t, v+1, p.Snapshot().Version)
	assert.Equal(t, builds, b.builds.Load())
}

func TestEndpointsSurviveRebuilds(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}})
	require.NoError(t, p.Set(backends(3)))
	ep := p.Endpoint(addr(1))
	ep.Start()
	require.True(t, p.SetHealthy(addr(0), false))
	require.NoError(t, p.Set(append(backends(3), balancer.Backend{Addr: addr(3)})))
	assert.Same(t, ep, p.Endpoint(addr(1)))
	assert.EqualValues(t, 1, p.Endpoint(addr(1)).InFlight())
	ep.Done(errors.New("boom"), time.Millisecond)
	assert.EqualValues(t, 0, ep.InFlight())
	assert.EqualValues(t, 1, ep.Failures())
	assert.EqualValues(t, 1, ep.Requests())

	// A zone change replaces the member.
	require.NoError(t, p.Add(balancer.Backend{Addr: addr(1), Zone: "b"}))
	assert.NotSame(t, ep, p.Endpoint(addr(1)))
	assert.Equal(t, "b", p.Endpoint(addr(1)).Zone())
	assert.Equal(t, 4, p.Len())
}

func TestDrain(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}})
	require.NoError(t, p.Set(backends(3)))
	ep := p.Endpoint(addr(2))
	ep.Start() // work in flight when the drain starts

	require.True(t, p.SetDraining(addr(2), true))
	assert.True(t, ep.Draining())
	counts := balancertest.Counts(t, p.Snapshot().Picker, 3000, nil)
	assert.Zero(t, counts[ep], "a draining endpoint must get no new work")
	assert.EqualValues(t, 1, ep.InFlight(), "in-flight work on a draining endpoint continues")
	ep.Done(nil, 0)

	require.True(t, p.SetDraining(addr(2), false))
	counts = balancertest.Counts(t, p.Snapshot().Picker, 3000, nil)
	assert.NotZero(t, counts[ep])
}

func TestPanicThreshold(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}, PanicThreshold: 0.5})
	require.NoError(t, p.Set(backends(4)))
	p.SetHealthy(addr(0), false)
	s := p.Snapshot()
	assert.False(t, s.Panic, "3 of 4 healthy is above the threshold")
	assert.Len(t, s.Ready, 3)

	p.SetHealthy(addr(1), false) // 2 of 4: at the threshold, not under it
	assert.False(t, p.Snapshot().Panic)
	p.SetHealthy(addr(2), false) // 1 of 4: panic
	s = p.Snapshot()
	assert.True(t, s.Panic)
	assert.Len(t, s.Ready, 4, "panic mode picks from every member")

	p.SetDraining(addr(3), true) // the only healthy one drains: 0 of 3, still panic, drained excluded
	s = p.Snapshot()
	assert.True(t, s.Panic)
	assert.Equal(t, []netip.AddrPort{addr(0), addr(1), addr(2)}, readyAddrs(s))

	p.SetDraining(addr(3), false)
	p.SetHealthy(addr(0), true)
	p.SetHealthy(addr(1), true)
	s = p.Snapshot()
	assert.False(t, s.Panic)
	assert.Equal(t, []netip.AddrPort{addr(0), addr(1), addr(3)}, readyAddrs(s))
}

func TestZonePreference(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}, LocalZone: "a"})
	require.NoError(t, p.Set([]balancer.Backend{
		{Addr: addr(0), Zone: "a"}, {Addr: addr(1), Zone: "a"},
		{Addr: addr(2), Zone: "b"}, {Addr: addr(3), Zone: "b"},
	}))
	assert.Equal(t, []netip.AddrPort{addr(0), addr(1)}, readyAddrs(p.Snapshot()))

	p.SetHealthy(addr(0), false) // 1 of 2 local ready: exactly the default 0.5
	assert.Equal(t, []netip.AddrPort{addr(1)}, readyAddrs(p.Snapshot()))

	p.SetHealthy(addr(1), false) // local zone empty: spill to every zone
	assert.Equal(t, []netip.AddrPort{addr(2), addr(3)}, readyAddrs(p.Snapshot()))

	p.SetHealthy(addr(1), true)
	assert.Equal(t, []netip.AddrPort{addr(1)}, readyAddrs(p.Snapshot()))
}

func TestWeights(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	require.NoError(t, p.Set([]balancer.Backend{{Addr: addr(0), Weight: 1}, {Addr: addr(1), Weight: 3}, {Addr: addr(2)}}))
	s := p.Snapshot()
	assert.Equal(t, []float64{1, 3, 1}, []float64{s.Ready[0].Weight, s.Ready[1].Weight, s.Ready[2].Weight})
	counts := balancertest.Counts(t, s.Picker, 50000, balancertest.RandomKeys(7))
	balancertest.CheckDistribution(t, s.Ready, counts, 0.05)

	require.True(t, p.SetWeight(addr(2), 4))
	assert.EqualValues(t, 4, p.Endpoint(addr(2)).Weight())
	assert.Equal(t, 4.0, p.Snapshot().Ready[2].Weight)
	require.True(t, p.SetWeight(addr(2), 0), "zero means 1")
	assert.Equal(t, 1.0, p.Snapshot().Ready[2].Weight)
}

func TestSlowStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := balancer.MustNew(balancer.Config{
			Builder:   maglev.Builder{Size: 1021},
			SlowStart: 10 * time.Second,
		})
		defer p.Close()
		// Members of the first Set start at full weight: the pool was not
		// in service yet.
		require.NoError(t, p.Set(backends(2)))
		weightOf := func(a netip.AddrPort) float64 {
			for _, w := range p.Snapshot().Ready {
				if w.Endpoint.Addr() == a {
					return w.Weight
				}
			}
			return 0
		}
		assert.Equal(t, 1.0, weightOf(addr(0)))

		// A backend that recovers ramps from 10% in 10 steps of 1 s.
		p.SetHealthy(addr(1), false)
		p.SetHealthy(addr(1), true)
		assert.InDelta(t, 0.1, weightOf(addr(1)), 1e-9)
		var seen []float64
		for range 10 {
			time.Sleep(time.Second)
			synctest.Wait()
			seen = append(seen, math.Round(weightOf(addr(1))*100)/100)
		}
		assert.Equal(t, []float64{0.19, 0.28, 0.37, 0.46, 0.55, 0.64, 0.73, 0.82, 0.91, 1}, seen)

		// A newly added backend ramps too, and its share of hash picks
		// follows its weight.
		require.NoError(t, p.Add(balancer.Backend{Addr: addr(2), Weight: 2}))
		assert.InDelta(t, 0.2, weightOf(addr(2)), 1e-9)
		s := p.Snapshot()
		counts := balancertest.Counts(t, s.Picker, 20000, balancertest.RandomKeys(3))
		balancertest.CheckDistribution(t, s.Ready, counts, 0.15)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Equal(t, 2.0, weightOf(addr(2)))
	})
}

func TestSlowStartStopsOnClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}, SlowStart: time.Minute})
		require.NoError(t, p.Set(backends(1)))
		require.NoError(t, p.Add(balancer.Backend{Addr: addr(1)}))
		require.NoError(t, p.Close())
		synctest.Wait() // no timer left: the bubble has no pending goroutine
		require.NoError(t, p.Add(balancer.Backend{Addr: addr(2)}))
		assert.Equal(t, 1.0, p.Snapshot().Ready[2].Weight, "after Close changes apply without ramping")
	})
}

func TestPickConcurrentWithUpdates(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}, SlowStart: time.Millisecond, PanicThreshold: 0.3})
	defer p.Close()
	require.NoError(t, p.Set(backends(8)))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var picks, misses atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ep, err := p.Pick(balancer.WithKey(uint64(g*1_000_000 + i)))
				if err != nil {
					misses.Add(1)
					continue
				}
				ep.Start()
				ep.Done(nil, time.Microsecond)
				picks.Add(1)
			}
		})
	}
	for i := range 2000 {
		a := addr(i % 10)
		switch i % 5 {
		case 0:
			p.SetHealthy(a, i%3 == 0)
		case 1:
			p.SetDraining(a, i%4 == 0)
		case 2:
			p.SetWeight(a, uint32(i%7))
		case 3:
			_ = p.Add(balancer.Backend{Addr: a})
		case 4:
			p.Remove(a)
		}
	}
	close(stop)
	wg.Wait()
	assert.Positive(t, picks.Load())
}

func TestPoolPickDoesNotAllocate(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}})
	require.NoError(t, p.Set(backends(3)))
	allocs := testing.AllocsPerRun(1000, func() {
		ep, _ := p.Pick(balancer.WithKey(42))
		ep.Start()
		ep.Done(nil, time.Millisecond)
	})
	assert.Zero(t, allocs)
}

func TestPeakEWMA(t *testing.T) {
	ep := balancer.NewEndpoint(balancer.Backend{Addr: addr(0)})
	t0 := time.Unix(1000, 0)
	ep.ObserveLatency(t0, 10*time.Millisecond)
	ns, _ := ep.LatencyEWMA()
	assert.Equal(t, float64(10*time.Millisecond), ns)

	// A higher sample is taken at once (peak).
	ep.ObserveLatency(t0.Add(time.Millisecond), 50*time.Millisecond)
	ns, _ = ep.LatencyEWMA()
	assert.Equal(t, float64(50*time.Millisecond), ns)

	// A lower one decays towards it with weight 1-exp(-Δt/τ): after one τ,
	// 1/e of the old value is left.
	ep.ObserveLatency(t0.Add(time.Millisecond+balancer.DefaultEWMADecay), 10*time.Millisecond)
	ns, stamp := ep.LatencyEWMA()
	want := 50*math.Exp(-1) + 10*(1-math.Exp(-1))
	assert.InDelta(t, want, ns/float64(time.Millisecond), 1e-9)
	assert.Equal(t, t0.Add(time.Millisecond+balancer.DefaultEWMADecay).UnixNano(), stamp)
}

func TestHashHelpers(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.0.1")
	mapped := netip.AddrFrom16(v4.As16())
	assert.Equal(t, balancer.HashAddr(v4), balancer.HashAddr(mapped), "IPv4 and IPv4-mapped hash alike")
	assert.NotEqual(t, balancer.HashAddr(v4), balancer.HashAddr(netip.MustParseAddr("198.18.0.2")))
	src := netip.MustParseAddrPort("198.18.0.1:40000")
	dst := netip.MustParseAddrPort("198.18.1.1:80")
	assert.NotEqual(t, balancer.HashFlow(6, src, dst), balancer.HashFlow(17, src, dst))
	assert.NotEqual(t, balancer.HashFlow(6, src, dst), balancer.HashFlow(6, dst, src))
	assert.NotEqual(t, balancer.HashAddrPort(src), balancer.HashAddrPort(dst))
	assert.Equal(t, balancer.HashString("abc"), balancer.HashBytes([]byte("abc")))
	allocs := testing.AllocsPerRun(100, func() {
		_ = balancer.HashFlow(6, src, dst) + balancer.HashAddr(v4) + balancer.HashAddrPort(src)
	})
	assert.Zero(t, allocs)
}

// The first verdict on a member (unknown to healthy) gives it its full
// weight: it has not failed. A member that joins later ramps from its
// first verdict; one that recovers from unhealthy ramps too.
func TestHealthUnknownSkipsSlowStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 1021}, SlowStart: 10 * time.Second})
		defer p.Close()
		require.NoError(t, p.Set(backends(2)))
		weightOf := func(a netip.AddrPort) float64 {
			for _, w := range p.Snapshot().Ready {
				if w.Endpoint.Addr() == a {
					return w.Weight
				}
			}
			return 0
		}
		// A checker marks members it has not judged yet unknown: not ready.
		assert.True(t, p.SetHealth(addr(0), balancer.HealthUnknown))
		assert.True(t, p.SetHealth(addr(1), balancer.HealthUnknown))
		assert.Empty(t, p.Snapshot().Ready)
		assert.Equal(t, balancer.HealthUnknown, p.Endpoint(addr(0)).Health())
		// First verdicts: full weight at once.
		assert.True(t, p.SetHealth(addr(0), balancer.Healthy))
		assert.True(t, p.SetHealth(addr(1), balancer.Healthy))
		assert.Equal(t, 1.0, weightOf(addr(0)))
		assert.Equal(t, 1.0, weightOf(addr(1)))
		assert.False(t, p.SetHealth(addr(1), balancer.Healthy), "no change")

		// A member that joins the pool in service ramps from its verdict.
		require.NoError(t, p.Add(balancer.Backend{Addr: addr(2)}))
		p.SetHealth(addr(2), balancer.HealthUnknown)
		time.Sleep(5 * time.Second)
		p.SetHealth(addr(2), balancer.Healthy)
		assert.InDelta(t, 0.1, weightOf(addr(2)), 1e-9)

		// Recovery ramps.
		p.SetHealth(addr(0), balancer.Unhealthy)
		assert.Equal(t, balancer.Unhealthy, p.Endpoint(addr(0)).Health())
		p.SetHealth(addr(0), balancer.Healthy)
		assert.InDelta(t, 0.1, weightOf(addr(0)), 1e-9)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1.0, weightOf(addr(0)))
	})
}

// Metadata lives on the member: Set updates it in place (counters kept)
// and publishes a snapshot; the pool copies the caller's map.
func TestMeta(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}, Name: "web"})
	assert.Equal(t, "web", p.Name())
	meta := map[string]string{"url": "http://a.test/"}
	require.NoError(t, p.Set([]balancer.Backend{{Addr: addr(0), Meta: meta}}))
	meta["url"] = "changed by the caller"
	ep := p.Endpoint(addr(0))
	assert.Equal(t, "http://a.test/", ep.Meta("url"))
	assert.Equal(t, "", ep.Meta("missing"))
	ep.Start()
	v := p.Snapshot().Version
	require.NoError(t, p.Set([]balancer.Backend{{Addr: addr(0), Meta: map[string]string{"url": "http://b.test/"}}}))
	assert.Same(t, ep, p.Endpoint(addr(0)), "same member")
	assert.Equal(t, "http://b.test/", ep.Meta("url"))
	assert.Equal(t, int64(1), ep.InFlight(), "counters kept")
	assert.Greater(t, p.Snapshot().Version, v, "a metadata change publishes a snapshot")
	v = p.Snapshot().Version
	require.NoError(t, p.Set([]balancer.Backend{{Addr: addr(0), Meta: map[string]string{"url": "http://b.test/"}}}))
	assert.Equal(t, v, p.Snapshot().Version, "same metadata: no snapshot")
	assert.Equal(t, map[string]string{"url": "http://b.test/"}, ep.Backend().Meta)
	ep.Done(nil, 0)
	assert.Equal(t, "default", balancer.MustNew(balancer.Config{Builder: &countingBuilder{}}).Name())
}

type recordingObserver struct {
	mu   sync.Mutex
	got  []string
	errs []error
}

func (o *recordingObserver) ObserveDone(ep *balancer.Endpoint, err error, latency time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, ep.Addr().String()+" "+latency.String())
	o.errs = append(o.errs, err)
}

// Done reports every outcome to the pool's observer, once.
func TestObserver(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}})
	require.NoError(t, p.Set(backends(1)))
	o := &recordingObserver{}
	assert.Nil(t, p.SetObserver(o))
	assert.Same(t, o, p.Observer())
	ep, err := p.Pick(balancer.PickInfo{})
	require.NoError(t, err)
	boom := errors.New("boom")
	ep.Start()
	ep.Done(boom, 3*time.Millisecond)
	ep.Start()
	ep.Done(nil, 0)
	assert.Equal(t, []string{addr(0).String() + " 3ms", addr(0).String() + " 0s"}, o.got)
	assert.Equal(t, []error{boom, nil}, o.errs)
	assert.Same(t, o, p.SetObserver(nil))
	ep.Start()
	ep.Done(boom, 0)
	assert.Len(t, o.got, 2, "removed observer hears nothing")
	// A standalone endpoint has no pool and no observer.
	lone := balancer.NewEndpoint(balancer.Backend{Addr: addr(9)})
	assert.Nil(t, lone.Pool())
	lone.Start()
	lone.Done(boom, 0)
	assert.Same(t, p, ep.Pool())
}

// An operator's override stands above health and configuration and goes
// with the member.
func TestOverride(t *testing.T) {
	p := balancer.MustNew(balancer.Config{Builder: &countingBuilder{}})
	require.NoError(t, p.Set(backends(2)))
	assert.True(t, p.SetOverride(addr(0), balancer.Override{Drain: true}))
	assert.Equal(t, []netip.AddrPort{addr(1)}, readyAddrs(p.Snapshot()))
	assert.True(t, p.Endpoint(addr(0)).Draining())
	// The health checker undraining (agent "up") does not undo it.
	p.SetDraining(addr(0), false)
	assert.Equal(t, []netip.AddrPort{addr(1)}, readyAddrs(p.Snapshot()))
	// A reload that keeps the member keeps the override.
	require.NoError(t, p.Set([]balancer.Backend{{Addr: addr(0), Weight: 3}, {Addr: addr(1)}}))
	assert.Equal(t, balancer.Override{Drain: true}, p.Endpoint(addr(0)).Override())
	assert.True(t, p.SetOverride(addr(0), balancer.Override{Weight: 7}))
	assert.Equal(t, []netip.AddrPort{addr(0), addr(1)}, readyAddrs(p.Snapshot()))
	assert.EqualValues(t, 7, p.Endpoint(addr(0)).Weight())
	assert.EqualValues(t, 3, p.Endpoint(addr(0)).Backend().Weight, "configured weight kept underneath")
	assert.Equal(t, 7.0, p.Snapshot().Ready[0].Weight)
	assert.True(t, p.SetOverride(addr(0), balancer.Override{}))
	assert.EqualValues(t, 3, p.Endpoint(addr(0)).Weight())
	assert.False(t, p.SetOverride(addr(5), balancer.Override{Drain: true}), "no such member")
}

// Reconfigure swaps the policy and keeps every member's state.
func TestReconfigure(t *testing.T) {
	b1, b2 := &countingBuilder{}, &countingBuilder{}
	p := balancer.MustNew(balancer.Config{Name: "web", Builder: b1})
	require.NoError(t, p.Set(backends(3)))
	ep := p.Endpoint(addr(1))
	ep.Start()
	p.SetHealthy(addr(2), false)
	p.SetOverride(addr(0), balancer.Override{Weight: 5})
	before := p.Snapshot()
	require.NoError(t, p.Reconfigure(balancer.Config{Builder: b2, PanicThreshold: 0.1}))
	after := p.Snapshot()
	assert.Greater(t, after.Version, before.Version)
	assert.EqualValues(t, 1, b2.builds.Load(), "a picker from the new builder, for the same ready set")
	assert.Same(t, ep, p.Endpoint(addr(1)), "members kept")
	assert.EqualValues(t, 1, ep.InFlight())
	assert.False(t, p.Endpoint(addr(2)).Healthy())
	assert.EqualValues(t, 5, p.Endpoint(addr(0)).Weight())
	assert.Equal(t, "web", p.Name())
	assert.Error(t, p.Reconfigure(balancer.Config{Builder: b2, Name: "api"}), "no renaming")
	assert.Error(t, p.Reconfigure(balancer.Config{}), "no builder")
	assert.Error(t, p.Reconfigure(balancer.Config{Builder: b2, PanicThreshold: 2}))
	assert.Equal(t, after.Version, p.Snapshot().Version, "a refused config changes nothing")
	ep.Done(nil, 0)
}
