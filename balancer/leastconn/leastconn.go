package leastconn

import (
	"math"
	"math/bits"
	"math/rand/v2"

	"github.com/lbkit/lbkit/balancer"
)

// DefaultScanLimit is the largest ready set a picker scans in full when
// Builder.ScanLimit is zero. Scanning 8 endpoints costs a few more
// nanoseconds than two random choices (six more in-flight loads, from
// cache for a busy pool) and gives the exact minimum, which matters most
// for small pools, where two choices often draw the same bad pair.
const DefaultScanLimit = 8

// Builder builds least-connections pickers. The zero value is ready to
// use and is safe for concurrent use by several pools.
type Builder struct {
	// ScanLimit is the largest ready set scanned in full; larger sets use
	// two random choices. Zero means DefaultScanLimit; negative means
	// always use two choices (for sets of three or more).
	ScanLimit int

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
	limit := b.ScanLimit
	if limit == 0 {
		limit = DefaultScanLimit
	}
	p := &Picker{entries: make([]entry, len(ready)), scan: len(ready) <= max(limit, 2), src: b.Rand}
	for i, w := range ready {
		p.entries[i] = entry{ep: w.Endpoint, inv: 1 / weight(w.Weight)}
	}
	return p
}

// Picker picks the endpoint with the least work in flight per unit of
// weight, exactly for small sets and by two random choices for larger
// ones. It is immutable and safe for concurrent use.
type Picker struct {
	entries []entry
	scan    bool
	src     rand.Source
}

type entry struct {
	ep  *balancer.Endpoint
	inv float64 // 1 / effective weight
}

// cost returns (in-flight + 1) / weight.
func (e *entry) cost() float64 {
	return float64(max(e.ep.InFlight(), 0)+1) * e.inv
}

// Pick returns the least-loaded endpoint; info is ignored. It never
// blocks, never fails and does not allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	es := p.entries
	if len(es) == 1 {
		return es[0].ep, nil
	}
	r := p.uint64()
	if p.scan {
		return p.minimum(r), nil
	}
	// i uniform in [0, n); j uniform among the other n-1, from the bits
	// left over (lo); the top bit of what is left after that breaks ties.
	n := uint64(len(es))
	i, lo := bits.Mul64(r, n)
	j, lo := bits.Mul64(lo, n-1)
	if j >= i {
		j++
	}
	a, b := &es[i], &es[j]
	ca, cb := a.cost(), b.cost()
	if cb < ca || (cb == ca && lo>>63 == 1) {
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

// minimum scans every entry and returns one of least cost, chosen
// uniformly among ties (reservoir sampling driven by r).
func (p *Picker) minimum(r uint64) *balancer.Endpoint {
	es := p.entries
	best, bestCost, ties := 0, es[0].cost(), uint64(1)
	for i := 1; i < len(es); i++ {
		c := es[i].cost()
		switch {
		case c < bestCost:
			best, bestCost, ties = i, c, 1
		case c == bestCost:
			// Keep the k-th tie with probability 1/k.
			ties++
			r = r*6364136223846793005 + 1442695040888963407
			if hi, _ := bits.Mul64(r, ties); hi == 0 {
				best = i
			}
		}
	}
	return es[best].ep
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
