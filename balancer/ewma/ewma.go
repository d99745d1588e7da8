package ewma

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Penalty is the latency, in nanoseconds, charged to an endpoint that has
// no latency sample yet but has work in flight: Finagle's value,
// 2^47 ns ≈ 39 hours, higher than any real estimate.
const Penalty = float64(math.MaxInt64 >> 16)

// Builder builds peak-EWMA pickers. The zero value is ready to use and is
// safe for concurrent use by several pools.
type Builder struct {
	// Rand, when set, is the source of the picker's random choices
	// instead of math/rand/v2's global functions, for reproducible tests
	// and simulations. A picker calls it from every goroutine that picks,
	// so it must be safe for concurrent use unless the picker is used by
	// one goroutine at a time (*rand.PCG and *rand.ChaCha8 are not safe).
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker over ready. It copies what it keeps.
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	p := &Picker{entries: make([]entry, len(ready)), sameDecay: true, src: b.Rand}
	p.tau = float64(ready[0].Endpoint.EWMADecay())
	for i, w := range ready {
		p.entries[i] = entry{ep: w.Endpoint, inv: 1 / weight(w.Weight)}
		p.sameDecay = p.sameDecay && float64(w.Endpoint.EWMADecay()) == p.tau
	}
	return p
}

// Picker picks by two random choices on peak-EWMA cost. It is immutable
// and safe for concurrent use.
type Picker struct {
	entries   []entry
	sameDecay bool    // every entry has the same τ: picks need no clock
	tau       float64 // that τ in ns
	src       rand.Source
}

// entry is 16 bytes, four to a cache line; an endpoint's own τ shares a
// cache line with its in-flight count, which every pick reads anyway.
type entry struct {
	ep  *balancer.Endpoint
	inv float64 // 1 / effective weight
}

// cost is an entry's cost as of its last sample.
type cost struct {
	c       float64 // latency × (in-flight+1) / weight, or 0 or Penalty + in-flight/weight without a sample
	stamp   int64   // time of the last sample, Unix ns
	sampled bool
}

func (e *entry) cost() cost {
	ns, stamp := e.ep.LatencyEWMA()
	a := float64(max(e.ep.InFlight(), 0))
	if ns == 0 {
		if a == 0 {
			return cost{}
		}
		return cost{c: Penalty + a*e.inv}
	}
	return cost{c: ns * (a + 1) * e.inv, stamp: stamp, sampled: true}
}

// Pick returns the cheaper of two distinct random endpoints, ties at
// random; info is ignored. It never blocks, never fails and does not
// allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	es := p.entries
	if len(es) == 1 {
		return es[0].ep, nil
	}
	n := uint64(len(es))
	i, lo := bits.Mul64(p.uint64(), n)
	j, lo := bits.Mul64(lo, n-1)
	if j >= i {
		j++
	}
	a, b := &es[i], &es[j]
	switch p.compare(a, b) {
	case -1:
		return a.ep, nil
	case 1:
		return b.ep, nil
	}
	if lo>>63 == 1 {
		return b.ep, nil
	}
	return a.ep, nil
}

// uint64 draws from the builder's Rand, or math/rand/v2.
func (p *Picker) uint64() uint64 {
	if p.src != nil {
		return p.src.Uint64()
	}
	return rand.Uint64()
}

// compare returns -1 if a is cheaper now, 1 if b is, 0 on a tie.
func (p *Picker) compare(a, b *entry) int {
	ca, cb := a.cost(), b.cost()
	switch {
	case ca.sampled && cb.sampled && p.sameDecay:
		// Decay the older sample relative to the newer one.
		d := float64(ca.stamp - cb.stamp)
		switch {
		case d*4096 > p.tau:
			return -olderVsNewer(cb.c, d/p.tau, ca.c)
		case -d*4096 > p.tau:
			return olderVsNewer(ca.c, -d/p.tau, cb.c)
		}
	case ca.sampled && cb.sampled,
		ca.sampled && cb.c > 0 && ca.c > cb.c,
		cb.sampled && ca.c > 0 && cb.c > ca.c:
		// Different decay constants, or a sampled cost that only its
		// decay can bring below the other's fixed no-sample cost: decay
		// sampled costs to now.
		now := time.Now().UnixNano()
		ca.c = decayed(ca, float64(a.ep.EWMADecay()), now)
		cb.c = decayed(cb, float64(b.ep.EWMADecay()), now)
	}
	switch {
	case ca.c < cb.c:
		return -1
	case cb.c < ca.c:
		return 1
	}
	return 0
}

// olderVsNewer compares old·e^-x (x > 0) with newer: -1 if it is less, 1
// if it is greater, 0 if equal. Cheap bounds settle most cases without
// calling math.Exp: decay only lowers old, and
// old·(1-x) ≤ old·e^-x ≤ old/(1+x+x²/2).
func olderVsNewer(old, x, newer float64) int {
	switch {
	case old <= newer, old/(1+x+x*x/2) < newer:
		return -1
	case old*(1-x) > newer:
		return 1
	}
	v := old * math.Exp(-x)
	switch {
	case v < newer:
		return -1
	case v > newer:
		return 1
	}
	return 0
}

// decayed returns c's cost decayed to now.
func decayed(c cost, tau float64, now int64) float64 {
	if !c.sampled {
		return c.c
	}
	dt := float64(now - c.stamp)
	if dt <= 0 {
		return c.c
	}
	return c.c * math.Exp(-dt/tau)
}

// weight returns w, or 1 if w is not positive and finite (the
// [balancer.Builder] contract rules that out; a bad weight must not
// break a pool's rebuild).
func weight(w float64) float64 {
	if w > 0 && !math.IsInf(w, 1) {
		return w
	}
	return 1
}
