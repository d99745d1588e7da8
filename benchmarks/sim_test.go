package benchmarks

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/ewma"
	"github.com/lbkit/lbkit/balancer/leastconn"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/random"
	"github.com/lbkit/lbkit/balancer/rendezvous"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
)

// The simulation: five backends behind one pool, each serving up to
// simWorkers requests at once and queueing the rest (FIFO). Requests
// arrive as a Poisson stream at simRate per second, about 40% of the
// total capacity, so a policy that matches work to capacity keeps every
// queue short, and one that ignores speed overloads the slow backend.
//
// Everything is simulated: time is a float of seconds, randomness comes
// from seeded PCG sources (one for the workload, one for the policy), and
// each request draws its random numbers up front, so every policy sees
// the same arrivals and the same service-time quantiles (common random
// numbers). Work is tracked on the real Endpoints with Start, Done and
// ObserveLatency at simulated timestamps, which is all the load-aware
// policies read.
const (
	simWorkers  = 8
	simRate     = 1200.0 // requests per second
	simRequests = 20000
	simSeed     = 42
)

// simBackend is one simulated backend: exponential service times with
// the given mean, and a share of requests failing fast.
type simBackend struct {
	name     string
	mean     float64 // seconds
	failRate float64
	failTime float64 // seconds; a failure returns after this long
	// slowFrom, when set, is the simulated time from which the backend
	// serves 10× slower (a degraded disk, a noisy neighbour).
	slowFrom float64
}

var simBackends = []simBackend{
	{name: "fast-a", mean: 0.010},
	{name: "fast-b", mean: 0.010},
	{name: "medium", mean: 0.020},
	{name: "slow", mean: 0.100}, // 10× slower
	{name: "flaky", mean: 0.010, failRate: 0.2, failTime: 0.001},
}

// simDegrade is the second scenario: the same backends, but fast-a turns
// 10× slower halfway through, which static weights cannot follow.
var simDegrade = func() []simBackend {
	b := slices.Clone(simBackends)
	b[0].slowFrom = simRequests / simRate / 2
	return b
}()

// simPolicies are the policies simulated. Hash policies get a key per
// client (1000 clients) as a sticky front-end would give them.
// "weighted-capacity" is weighted round robin with static weights an
// operator who measured the backends would set (proportional to
// capacity: 10, 10, 5, 1, 12).
var simPolicies = []struct {
	name    string
	build   func(src rand.Source) balancer.Builder
	keyed   bool
	weights []uint32
}{
	{"roundrobin", func(s rand.Source) balancer.Builder { return roundrobin.Builder{Rand: s} }, false, nil},
	{"weighted", func(s rand.Source) balancer.Builder { return weighted.Builder{Rand: s} }, false, nil},
	{"weighted-capacity", func(s rand.Source) balancer.Builder { return weighted.Builder{Rand: s} }, false, []uint32{10, 10, 5, 1, 12}},
	{"random", func(s rand.Source) balancer.Builder { return random.Builder{Rand: s} }, false, nil},
	{"maglev", func(rand.Source) balancer.Builder { return maglev.Builder{} }, true, nil},
	{"rendezvous", func(rand.Source) balancer.Builder { return rendezvous.Builder{} }, true, nil},
	{"ringhash-bounded", func(rand.Source) balancer.Builder { return ringhash.Builder{Epsilon: 0.25} }, true, nil},
	{"leastconn", func(s rand.Source) balancer.Builder { return leastconn.Builder{Rand: s} }, false, nil},
	{"leastconn-p2c", func(s rand.Source) balancer.Builder { return leastconn.Builder{ScanLimit: -1, Rand: s} }, false, nil},
	{"ewma", func(s rand.Source) balancer.Builder { return ewma.Builder{Rand: s} }, false, nil},
}

// simResult is what one run measured.
type simResult struct {
	p50, p99, p999 float64   // latency seen by clients, seconds
	failed         float64   // share of requests that failed
	share          []float64 // share of requests per backend
	imbalance      float64   // max over backends of share / capacity share
}

// simEvent is a request finishing on a backend.
type simEvent struct {
	at      float64
	backend int
	req     int
}

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].req < q[j].req
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simRequest is one request's fate, drawn before any policy sees it.
type simRequest struct {
	arrive  float64 // seconds
	service float64 // quantile -ln(1-u): service time / mean
	fail    float64 // uniform in [0, 1): fails where fail < failRate
	key     balancer.PickInfo
}

func simWorkload() []simRequest {
	rng := rand.New(rand.NewPCG(simSeed, 1))
	reqs := make([]simRequest, simRequests)
	t := 0.0
	for i := range reqs {
		t += rng.ExpFloat64() / simRate
		reqs[i] = simRequest{
			arrive:  t,
			service: rng.ExpFloat64(),
			fail:    rng.Float64(),
			key:     balancer.WithKey(balancer.Mix64(uint64(rng.IntN(1000)))),
		}
	}
	return reqs
}

// simRun drives reqs through a pool built by b and returns the result.
func simRun(t testing.TB, bes []simBackend, b balancer.Builder, keyed bool, weights []uint32, reqs []simRequest) simResult {
	t.Helper()
	pool := balancer.MustNew(balancer.Config{Builder: b})
	defer pool.Close()
	backends := make([]balancer.Backend, len(bes))
	for i := range backends {
		backends[i] = balancer.Backend{Addr: balancertest.Addr(i)}
		if weights != nil {
			backends[i].Weight = weights[i]
		}
	}
	require.NoError(t, pool.Set(backends))
	eps := pool.Endpoints()
	index := make(map[*balancer.Endpoint]int, len(eps))
	for i, ep := range eps {
		index[ep] = i
	}
	base := time.Unix(1_700_000_000, 0)
	stamp := func(at float64) time.Time { return base.Add(time.Duration(at * float64(time.Second))) }

	var (
		events   simQueue
		busy     = make([]int, len(eps))
		waiting  = make([][]int, len(eps)) // FIFO of request indices
		latency  = make([]float64, len(reqs))
		failed   = make([]bool, len(reqs))
		assigned = make([]int, len(eps))
	)
	begin := func(i, be int, at float64) {
		sb := bes[be]
		d := reqs[i].service * sb.mean
		if sb.slowFrom > 0 && at >= sb.slowFrom {
			d *= 10
		}
		if reqs[i].fail < sb.failRate {
			d, failed[i] = sb.failTime, true
		}
		busy[be]++
		heap.Push(&events, simEvent{at: at + d, backend: be, req: i})
	}
	finish := func(e simEvent) {
		ep := eps[e.backend]
		lat := e.at - reqs[e.req].arrive
		latency[e.req] = lat
		var err error
		if failed[e.req] {
			err = errSimFailed
		}
		ep.Done(err, 0) // latency reported below, at simulated time
		ep.ObserveLatency(stamp(e.at), time.Duration(lat*float64(time.Second)))
		busy[e.backend]--
		if q := waiting[e.backend]; len(q) > 0 {
			waiting[e.backend] = q[1:]
			begin(q[0], e.backend, e.at)
		}
	}
	for i, r := range reqs {
		for len(events) > 0 && events[0].at <= r.arrive {
			finish(heap.Pop(&events).(simEvent))
		}
		info := balancer.PickInfo{}
		if keyed {
			info = r.key
		}
		ep, err := pool.Pick(info)
		require.NoError(t, err)
		be := index[ep]
		assigned[be]++
		ep.Start()
		if busy[be] < simWorkers {
			begin(i, be, r.arrive)
		} else {
			waiting[be] = append(waiting[be], i)
		}
	}
	for len(events) > 0 {
		finish(heap.Pop(&events).(simEvent))
	}

	res := simResult{share: make([]float64, len(eps))}
	sorted := slices.Clone(latency)
	slices.Sort(sorted)
	q := func(p float64) float64 { return sorted[int(math.Ceil(p*float64(len(sorted))))-1] }
	res.p50, res.p99, res.p999 = q(0.50), q(0.99), q(0.999)
	nFailed := 0
	for _, f := range failed {
		if f {
			nFailed++
		}
	}
	res.failed = float64(nFailed) / float64(len(reqs))
	capacity := make([]float64, len(bes)) // before any degradation
	total := 0.0
	for i, sb := range bes {
		mean := sb.failRate*sb.failTime + (1-sb.failRate)*sb.mean
		capacity[i] = simWorkers / mean
		total += capacity[i]
	}
	for i := range eps {
		res.share[i] = float64(assigned[i]) / float64(len(reqs))
		res.imbalance = max(res.imbalance, res.share[i]/(capacity[i]/total))
	}
	return res
}

var errSimFailed = fmt.Errorf("benchmarks: simulated failure")

// BenchmarkSimulation reports, per policy, what clients saw in the
// simulation: latency percentiles in ms, the failed share in %, the share
// of work sent to the slow backend in %, and the imbalance (largest ratio
// of a backend's share of work to its share of capacity; 1 is ideal).
// The time per op is only the simulator's own cost.
func BenchmarkSimulation(b *testing.B) { simBenchmark(b, simBackends) }

// BenchmarkSimulationDegrade is BenchmarkSimulation with fast-a turning
// 10× slower halfway through (slow-% still counts the always-slow
// backend).
func BenchmarkSimulationDegrade(b *testing.B) { simBenchmark(b, simDegrade) }

func simBenchmark(b *testing.B, bes []simBackend) {
	reqs := simWorkload()
	for _, pol := range simPolicies {
		b.Run(pol.name, func(b *testing.B) {
			var res simResult
			for b.Loop() {
				res = simRun(b, bes, pol.build(rand.NewPCG(simSeed, 2)), pol.keyed, pol.weights, reqs)
			}
			b.ReportMetric(res.p50*1e3, "p50-ms")
			b.ReportMetric(res.p99*1e3, "p99-ms")
			b.ReportMetric(res.p999*1e3, "p99.9-ms")
			b.ReportMetric(res.failed*100, "failed-%")
			b.ReportMetric(res.share[3]*100, "slow-%")
			b.ReportMetric(res.share[4]*100, "flaky-%")
			b.ReportMetric(res.imbalance, "imbalance")
		})
	}
}

// TestSimulation holds the qualitative results, which follow from the
// model and the fixed seeds, not from timing: round robin gives the slow
// backend its fifth and lets its queue explode; least connections and
// peak EWMA starve it and keep the tail short, and are drawn to the
// backend that fails fast.
func TestSimulation(t *testing.T) {
	reqs := simWorkload()
	res := map[string]simResult{}
	for _, pol := range simPolicies {
		res[pol.name] = simRun(t, simBackends, pol.build(rand.NewPCG(simSeed, 2)), pol.keyed, pol.weights, reqs)
		r := res[pol.name]
		t.Logf("%-17s p50 %7.1f ms  p99 %8.1f ms  failed %5.2f%%  slow %5.2f%%  flaky %5.2f%%  imbalance %.2f",
			pol.name, r.p50*1e3, r.p99*1e3, r.failed*100, r.share[3]*100, r.share[4]*100, r.imbalance)
	}

	rr := res["roundrobin"]
	assert.InDelta(t, 0.2, rr.share[3], 0.001, "round robin gives every backend a fifth")
	for _, name := range []string{"leastconn", "leastconn-p2c", "ewma"} {
		r := res[name]
		assert.Less(t, r.share[3], rr.share[3]/3, "%s sends the slow backend less work", name)
		assert.Less(t, r.p99, rr.p99/10, "%s cuts p99 latency", name)
		assert.Less(t, r.imbalance, rr.imbalance/2, "%s matches work to capacity", name)
	}
	assert.Less(t, res["ewma"].p99, res["leastconn"].p99, "latency beats queue length at the tail")
	wc := res["weighted-capacity"]
	assert.Less(t, wc.p99, rr.p99/10, "static weights help when the speeds are known and fixed")
	assert.Less(t, wc.imbalance, 1.2)
	assert.Less(t, res["ewma"].share[3], res["leastconn"].share[3], "ewma sees the slow backend's latency, not just its queue")
	// The price: a backend that fails fast looks fast and idle, so
	// load-aware policies send it more work and more requests fail.
	// Passive health checks (ejection on errors) are the remedy.
	for _, name := range []string{"leastconn", "ewma"} {
		assert.Greater(t, res[name].share[4], rr.share[4], "%s is drawn to the fast-failing backend", name)
		assert.Greater(t, res[name].failed, rr.failed, name)
	}

	again := simRun(t, simBackends, simPolicies[len(simPolicies)-1].build(rand.NewPCG(simSeed, 2)), false, nil, reqs)
	assert.Equal(t, res["ewma"], again, "the simulation is deterministic")
}

// TestSimulationDegrade: when a fast backend turns slow halfway, weights
// set for the old speeds overload it, while the adaptive policies move
// work away from it.
func TestSimulationDegrade(t *testing.T) {
	reqs := simWorkload()
	res := map[string]simResult{}
	for _, pol := range simPolicies {
		res[pol.name] = simRun(t, simDegrade, pol.build(rand.NewPCG(simSeed, 2)), pol.keyed, pol.weights, reqs)
		r := res[pol.name]
		t.Logf("%-17s p50 %7.1f ms  p99 %8.1f ms  p99.9 %8.1f ms  failed %5.2f%%  fast-a %5.2f%%",
			pol.name, r.p50*1e3, r.p99*1e3, r.p999*1e3, r.failed*100, r.share[0]*100)
	}
	wc := res["weighted-capacity"]
	for _, name := range []string{"leastconn", "ewma"} {
		assert.Less(t, res[name].p99, wc.p99/2, "%s adapts, static weights do not", name)
		assert.Less(t, res[name].share[0], wc.share[0], name)
	}
}
