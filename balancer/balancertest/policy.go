package balancertest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Sizes are the ready-set sizes the shared policy checks run at.
var Sizes = []int{1, 3, 100, 1000}

// LoadedReady returns n fake endpoints with weights 1–3, some work in
// flight and latency samples, so load-aware policies take their real code
// paths.
func LoadedReady(n int) []balancer.Weighted {
	ws := make([]float64, n)
	for i := range ws {
		ws[i] = float64(1 + i%3)
	}
	ready := ReadyWeights(ws...)
	now := time.Now()
	for i, w := range ready {
		for range i % 4 {
			w.Endpoint.Start()
		}
		w.Endpoint.ObserveLatency(now.Add(time.Duration(i)*time.Millisecond), time.Duration(1+i%5)*time.Millisecond)
	}
	return ready
}

// CheckEmpty fails t unless a picker built from an empty ready set fails
// with balancer.ErrNoBackend (pools never build one, but a builder must not
// crash on it).
func CheckEmpty(t *testing.T, b balancer.Builder) {
	t.Helper()
	for _, info := range []balancer.PickInfo{{}, balancer.WithKey(1)} {
		if _, err := b.Build(nil).Pick(info); !errors.Is(err, balancer.ErrNoBackend) {
			t.Errorf("empty picker, %+v: got %v, want ErrNoBackend", info, err)
		}
	}
}

// CheckNoAllocsAtSizes runs [CheckNoAllocs] on pickers built by b over
// idle and loaded ready sets of every size in [Sizes], with and without a
// key.
func CheckNoAllocsAtSizes(t *testing.T, b balancer.Builder) {
	for _, n := range Sizes {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			for _, p := range []balancer.Picker{b.Build(Ready(n)), b.Build(LoadedReady(n))} {
				CheckNoAllocs(t, p, balancer.PickInfo{})
				CheckNoAllocs(t, p, balancer.WithKey(42))
			}
		})
	}
}

// CheckConcurrentWithUpdates picks through a real pool built on b from
// several goroutines while another changes membership, health, drain and
// weights. Run it with -race; it fails t if a pick returns an endpoint that
// was never a member or an error other than ErrNoBackend.
func CheckConcurrentWithUpdates(t *testing.T, b balancer.Builder) {
	pool := balancer.MustNew(balancer.Config{Builder: b, PanicThreshold: 0.3})
	defer pool.Close()
	const members = 12
	backends := make([]balancer.Backend, members)
	valid := map[netip.AddrPort]bool{}
	for i := range backends {
		backends[i] = balancer.Backend{Addr: Addr(i), Weight: uint32(1 + i%3)}
		valid[backends[i].Addr] = true
	}
	if err := pool.Set(backends); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range 2000 {
			a := backends[i%members].Addr
			switch i % 5 {
			case 0:
				pool.SetHealthy(a, i%2 == 0)
			case 1:
				pool.SetDraining(a, i%3 == 0)
			case 2:
				pool.SetWeight(a, uint32(1+i%4))
			case 3:
				pool.Remove(a)
			case 4:
				if err := pool.Add(backends[i%members]); err != nil {
					t.Errorf("add: %v", err)
				}
			}
		}
	})
	for g := range 4 {
		wg.Go(func() {
			// At least 5000 picks each, so picks overlap the updates even
			// when the scheduler runs the updater first.
			for i := range 200_000 {
				if i >= 5000 {
					select {
					case <-done:
						return
					default:
					}
				}
				ep, err := pool.Pick(balancer.PickInfo{Key: uint64(i * g), HasKey: g%2 == 0})
				if err != nil {
					if !errors.Is(err, balancer.ErrNoBackend) {
						t.Errorf("pick: %v", err)
						return
					}
					continue
				}
				if ep == nil || !valid[ep.Addr()] {
					t.Errorf("picked %v", ep)
					return
				}
				ep.Start()
				ep.Done(nil, time.Duration(1+i%7)*time.Millisecond)
			}
		})
	}
	wg.Wait()
}

// CheckInvalidWeights fails t unless weights the Builder contract rules
// out (zero, negative, NaN, +Inf) are survived: the build and the picks
// work and every pick names an endpoint.
func CheckInvalidWeights(t *testing.T, b balancer.Builder) {
	ready := ReadyWeights(1, 1, 1, 1, 2)
	ready[0].Weight, ready[1].Weight, ready[2].Weight, ready[3].Weight = 0, math.NaN(), -1, math.Inf(1)
	counts := Counts(t, b.Build(ready), 600, nil)
	for ep := range counts {
		if ep == nil {
			t.Fatal("picked a nil endpoint")
		}
	}
}

// CheckSeeded fails t unless pickers from build(src) pick the same
// sequence for the same seed and another for another seed (keyless picks
// over loaded ready sets of 3 and 100).
func CheckSeeded(t *testing.T, build func(src rand.Source) balancer.Builder) {
	for _, n := range []int{3, 100} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := LoadedReady(n)
			picks := func(seed uint64) []*balancer.Endpoint {
				p := build(rand.NewPCG(seed, 1)).Build(ready)
				out := make([]*balancer.Endpoint, 200)
				for i := range out {
					ep, err := p.Pick(balancer.PickInfo{})
					if err != nil {
						t.Fatal(err)
					}
					out[i] = ep
				}
				return out
			}
			a, again, other := picks(1), picks(1), picks(2)
			for i := range a {
				if a[i] != again[i] {
					t.Fatalf("seed 1 picked differently at %d", i)
				}
			}
			same := true
			for i := range a {
				same = same && a[i] == other[i]
			}
			if same {
				t.Error("seeds 1 and 2 picked the same 200 endpoints")
			}
		})
	}
}

// BenchmarkPick measures b's picks over loaded ready sets of 3, 100 and
// 1000 endpoints, keyless, on one goroutine or (parallel) from GOMAXPROCS
// goroutines.
func BenchmarkPick(b *testing.B, builder balancer.Builder, parallel bool) {
	benchmarkPick(b, builder, parallel, false)
}

// BenchmarkPickKeyed is [BenchmarkPick] over idle ready sets with a new
// affinity key for every pick, the path hash-based policies take.
func BenchmarkPickKeyed(b *testing.B, builder balancer.Builder, parallel bool) {
	benchmarkPick(b, builder, parallel, true)
}

func benchmarkPick(b *testing.B, builder balancer.Builder, parallel, keyed bool) {
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprint("n=", n), func(b *testing.B) {
			ready := LoadedReady(n)
			if keyed {
				ready = Ready(n)
			}
			p := builder.Build(ready)
			// pick draws successive keys from a golden-ratio sequence, or
			// none; every goroutine keeps its own sequence.
			pick := func(k *uint64) {
				var info balancer.PickInfo
				if keyed {
					*k += 0x9e3779b97f4a7c15
					info = balancer.WithKey(*k)
				}
				_, _ = p.Pick(info)
			}
			b.ReportAllocs()
			b.ResetTimer() // the build is not part of a pick
			if parallel {
				b.RunParallel(func(pb *testing.PB) {
					var k uint64
					for pb.Next() {
						pick(&k)
					}
				})
				return
			}
			var k uint64
			for b.Loop() {
				pick(&k)
			}
		})
	}
}

// BenchmarkBuild measures b's Build over idle ready sets of 3, 100 and
// 1000 endpoints: the work a pool does on every ready-set change.
func BenchmarkBuild(b *testing.B, builder balancer.Builder) {
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprint("n=", n), func(b *testing.B) {
			ready := Ready(n)
			b.ReportAllocs()
			for b.Loop() {
				builder.Build(ready)
			}
		})
	}
}

// CheckSlowStart shows a pool's slow start working through b: in a
// synctest bubble, one of four backends turns unhealthy and healthy again,
// and at each of 10 steps of a 10 s window the share of picks keyed by keys
// it receives must be within tol of f/(3+f), where f ramps from 0.1 to 1,
// and must not fall by more than slack from one step to the next.
func CheckSlowStart(t *testing.T, b balancer.Builder, keys func(i int) balancer.PickInfo, tol, slack float64) {
	synctest.Test(t, func(t *testing.T) {
		const n, window, steps, picks = 4, 10 * time.Second, 10, 10000
		pool := balancer.MustNew(balancer.Config{Builder: b, SlowStart: window, SlowStartSteps: steps})
		defer pool.Close()
		var backends []balancer.Backend
		for i := range n {
			backends = append(backends, balancer.Backend{Addr: Addr(i)})
		}
		if err := pool.Set(backends); err != nil {
			t.Fatal(err)
		}
		late := backends[n-1].Addr
		pool.SetHealthy(late, false)
		pool.SetHealthy(late, true)

		share := func() float64 {
			c := Counts(t, pool, picks, keys)
			return float64(c[pool.Endpoint(late)]) / picks
		}
		prev := -1.0
		for k := range steps + 1 {
			f := 0.1 + 0.9*float64(k)/steps
			want := f / (n - 1 + f)
			got := share()
			t.Logf("t=%v: share %.3f, want %.3f", time.Duration(k)*window/steps, got, want)
			if math.Abs(got-want) > tol {
				t.Errorf("step %d: share %.3f, want %.3f ± %.3f", k, got, want, tol)
			}
			if got < prev-slack {
				t.Errorf("step %d: share fell from %.3f to %.3f while ramping", k, prev, got)
			}
			prev = got
			time.Sleep(window / steps)
			synctest.Wait()
		}
		if got := share(); math.Abs(got-1.0/n) > tol {
			t.Errorf("after the window: share %.3f, want %.3f", got, 1.0/n)
		}
	})
}

// CheckDeterministic fails t unless keyed picks from b are reproducible:
// a picker built over fresh endpoints with the same addresses and weights
// in reverse order picks the same addresses, and a rebuild over the same
// ready set picks the same endpoints, for 5000 keys from keys. The ready
// set has one endpoint per weight.
func CheckDeterministic(t *testing.T, b balancer.Builder, keys func(i int) balancer.PickInfo, weights ...float64) {
	t.Helper()
	ready := ReadyWeights(weights...)
	a := b.Build(ready)
	other := ReadyWeights(weights...) // new endpoints, same addresses
	slices.Reverse(other)
	o := b.Build(other)
	c := b.Build(slices.Clone(ready)) // a rebuild that changes nothing
	for i := range 5000 {
		ea, errA := a.Pick(keys(i))
		eo, errO := o.Pick(keys(i))
		ec, errC := c.Pick(keys(i))
		if err := errors.Join(errA, errO, errC); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		if ea.Addr() != eo.Addr() {
			t.Fatalf("key %d: %v, but %v from the reordered set", i, ea.Addr(), eo.Addr())
		}
		if ea != ec {
			t.Fatalf("key %d: %v, but %v after a rebuild that changed nothing", i, ea.Addr(), ec.Addr())
		}
	}
}
