package benchmarks

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/ewma"
	"github.com/lbkit/lbkit/balancer/first"
	"github.com/lbkit/lbkit/balancer/leastconn"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/random"
	"github.com/lbkit/lbkit/balancer/rendezvous"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/sourcehash"
	"github.com/lbkit/lbkit/balancer/weighted"
)

// pickPolicies lists every policy in the repository and the two
// baselines, in the order benchmarks report them.
var pickPolicies = []struct {
	name    string
	builder balancer.Builder
}{
	{"mutex-rr", pickMutexRR{}},
	{"atomic-rr", pickAtomicRR{}},
	{"roundrobin", roundrobin.Builder{}},
	{"weighted", weighted.Builder{}},
	{"random", random.Builder{}},
	{"random-uniform", pickUniform{random.Builder{}}},
	{"leastconn", leastconn.Builder{}},
	{"ewma", ewma.Builder{}},
	{"first", first.Builder{}},
	{"ringhash", ringhash.Builder{}},
	{"ringhash-bounded", ringhash.Builder{Epsilon: 0.25}},
	{"maglev", maglev.Builder{}},
	{"rendezvous", rendezvous.Builder{}},
	{"sourcehash", sourcehash.Builder{}},
	{"sourcehash-map", sourcehash.Builder{HashType: sourcehash.MapBased}},
}

// pickSizes are the ready-set sizes benchmarked.
var pickSizes = []int{3, 100, 1000}

// pickKeys are affinity keys for hash-based policies; every policy gets
// them so all pay the same for reading one.
var pickKeys = func() []balancer.PickInfo {
	k := make([]balancer.PickInfo, 1024)
	for i := range k {
		k[i] = balancer.WithKey(balancer.Mix64(uint64(i) + 1))
	}
	return k
}()

// pickCPU returns the CPU time (user + system) the process has used. The
// benchmarks report it per pick as cpu-ns/op next to the wall-clock
// ns/op: on a machine shared with other work, wall time includes time
// spent waiting for a CPU and CPU time does not (the peers note found it
// the most stable figure here). In parallel runs it sums every thread's
// time, so a pick that contends (a cache line bouncing, a spinning
// mutex) costs more of it; a goroutine parked on a mutex costs less, so
// read it together with ns/op.
func pickCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPick measures one Pick on one goroutine.
func BenchmarkPick(b *testing.B) {
	for _, pol := range pickPolicies {
		for _, n := range pickSizes {
			b.Run(fmt.Sprintf("%s/n=%d", pol.name, n), func(b *testing.B) {
				p := pol.builder.Build(balancertest.LoadedReady(n))
				if _, err := p.Pick(pickKeys[0]); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				i := 0
				cpu := pickCPU()
				for b.Loop() {
					_, _ = p.Pick(pickKeys[i&1023])
					i++
				}
				b.ReportMetric(float64(pickCPU()-cpu)/float64(i), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkPickParallel measures Pick from GOMAXPROCS goroutines sharing
// one picker.
func BenchmarkPickParallel(b *testing.B) {
	for _, pol := range pickPolicies {
		for _, n := range pickSizes {
			b.Run(fmt.Sprintf("%s/n=%d", pol.name, n), func(b *testing.B) {
				p := pol.builder.Build(balancertest.LoadedReady(n))
				if _, err := p.Pick(pickKeys[0]); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				var picks atomic.Int64
				cpu := pickCPU()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						_, _ = p.Pick(pickKeys[i&1023])
						i++
					}
					picks.Add(int64(i))
				})
				b.ReportMetric(float64(pickCPU()-cpu)/float64(picks.Load()), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkPickDone measures what a front-end pays per request with a
// pool of 100: Pick, Endpoint.Start and Endpoint.Done with a latency,
// from GOMAXPROCS goroutines. Start and Done write the endpoint's shared
// counters (and Done reads the clock for the latency EWMA), so this is
// where load-aware policies pay for their information.
func BenchmarkPickDone(b *testing.B) {
	for _, pol := range pickPolicies {
		b.Run(pol.name, func(b *testing.B) {
			p := pol.builder.Build(balancertest.LoadedReady(100))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					ep, err := p.Pick(pickKeys[i&1023])
					if err != nil {
						b.Error(err)
						return
					}
					ep.Start()
					ep.Done(nil, time.Millisecond)
					i++
				}
			})
		})
	}
}

// BenchmarkBuild measures building a picker from a ready set, which a
// pool does on every change of the ready set or of an effective weight
// (each slow-start step included). Weights are 1–3 plus a third, so
// weighted schedules take their inexact, full-length path.
func BenchmarkBuild(b *testing.B) {
	for _, pol := range pickPolicies {
		for _, n := range pickSizes {
			b.Run(fmt.Sprintf("%s/n=%d", pol.name, n), func(b *testing.B) {
				ready := balancertest.LoadedReady(n)
				for i := range ready {
					ready[i].Weight += 1.0 / 3
				}
				b.ReportAllocs()
				for b.Loop() {
					pol.builder.Build(ready)
				}
			})
		}
	}
}

// TestPickPoliciesNoAllocs holds every benchmarked policy, baselines
// included, to 0 allocations per pick.
func TestPickPoliciesNoAllocs(t *testing.T) {
	for _, pol := range pickPolicies {
		for _, n := range pickSizes {
			t.Run(fmt.Sprintf("%s/n=%d", pol.name, n), func(t *testing.T) {
				balancertest.CheckNoAllocs(t, pol.builder.Build(balancertest.LoadedReady(n)), pickKeys[7])
			})
		}
	}
}

// pickUniform builds with every weight set to 1, for the uniform path of
// policies that take weights.
type pickUniform struct{ b balancer.Builder }

func (u pickUniform) Build(ready []balancer.Weighted) balancer.Picker {
	eq := make([]balancer.Weighted, len(ready))
	for i, w := range ready {
		eq[i] = balancer.Weighted{Endpoint: w.Endpoint, Weight: 1}
	}
	return u.b.Build(eq)
}

// pickMutexRR is the first baseline: round robin under a mutex, as a
// straightforward Go implementation would write it.
type pickMutexRR struct{}

func (pickMutexRR) Build(ready []balancer.Weighted) balancer.Picker {
	p := &pickMutexPicker{eps: make([]*balancer.Endpoint, len(ready))}
	for i, w := range ready {
		p.eps[i] = w.Endpoint
	}
	return p
}

type pickMutexPicker struct {
	mu   sync.Mutex
	next int
	eps  []*balancer.Endpoint
}

func (p *pickMutexPicker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	p.mu.Lock()
	ep := p.eps[p.next]
	p.next++
	if p.next == len(p.eps) {
		p.next = 0
	}
	p.mu.Unlock()
	return ep, nil
}

// pickAtomicRR is the second baseline: gRPC-go's round robin, one shared
// atomic counter.
type pickAtomicRR struct{}

func (pickAtomicRR) Build(ready []balancer.Weighted) balancer.Picker {
	p := &pickAtomicPicker{eps: make([]*balancer.Endpoint, len(ready))}
	for i, w := range ready {
		p.eps[i] = w.Endpoint
	}
	return p
}

type pickAtomicPicker struct {
	next atomic.Uint32
	eps  []*balancer.Endpoint
}

func (p *pickAtomicPicker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	return p.eps[p.next.Add(1)%uint32(len(p.eps))], nil
}
