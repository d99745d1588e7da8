package random

import (
	"math"
	"math/bits"
	"math/rand/v2"

	"github.com/lbkit/lbkit/balancer"
)

// Builder builds random pickers. The zero value is ready to use and is
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

// Build returns a picker over ready: uniform when all weights are equal,
// weighted by the alias method otherwise. Build copies what it keeps and
// takes O(n) time.
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	n := len(ready)
	if n == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	p := &Picker{eps: make([]*balancer.Endpoint, n), n: uint64(n), src: b.Rand}
	equal := true
	for i, w := range ready {
		p.eps[i] = w.Endpoint
		equal = equal && weight(w.Weight) == weight(ready[0].Weight)
	}
	if !equal {
		p.cut, p.alias = aliasTable(ready)
	}
	return p
}

// Picker picks an endpoint at random. It is immutable and safe for
// concurrent use.
type Picker struct {
	eps   []*balancer.Endpoint
	n     uint64
	cut   []uint64 // column i keeps i when the pick's fraction is < cut[i]; nil when uniform
	alias []uint32 // column i's other endpoint
	src   rand.Source
}

// Pick returns a random endpoint, with probability proportional to its
// weight; info is ignored. It never blocks, never fails and does not
// allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	// hi is uniform in [0, n) (Lemire's multiply-shift; the bias is at
	// most n/2^64); lo is the fraction left over, uniform in [0, 2^64)
	// to within n units.
	hi, lo := bits.Mul64(p.uint64(), p.n)
	if p.cut == nil || lo < p.cut[hi] {
		return p.eps[hi], nil
	}
	return p.eps[p.alias[hi]], nil
}

// uint64 draws from the builder's Rand, or math/rand/v2.
func (p *Picker) uint64() uint64 {
	if p.src != nil {
		return p.src.Uint64()
	}
	return rand.Uint64()
}

// aliasTable builds Vose's alias table for the weights of ready. Column i
// keeps endpoint i with probability cut[i]/2^64 and gives alias[i]
// otherwise.
func aliasTable(ready []balancer.Weighted) (cut []uint64, alias []uint32) {
	n := len(ready)
	sum := 0.0
	for _, w := range ready {
		sum += weight(w.Weight)
	}
	prob := make([]float64, n) // scaled so the mean column is 1
	small := make([]int, 0, n)
	large := make([]int, 0, n)
	for i, w := range ready {
		prob[i] = weight(w.Weight) * float64(n) / sum
		if prob[i] < 1 {
			small = append(small, i)
		} else {
			large = append(large, i)
		}
	}
	cut = make([]uint64, n)
	alias = make([]uint32, n)
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		cut[s] = toFraction(prob[s])
		alias[s] = uint32(l)
		prob[l] -= 1 - prob[s]
		if prob[l] < 1 {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	// What remains is 1 up to rounding: keep it whole.
	for _, i := range append(small, large...) {
		cut[i] = math.MaxUint64
		alias[i] = uint32(i)
	}
	return cut, alias
}

// toFraction maps p in [0, 1) to a threshold in [0, 2^64).
func toFraction(p float64) uint64 {
	if p <= 0 {
		return 0
	}
	if p >= 1 {
		return math.MaxUint64
	}
	return uint64(p * (1 << 64))
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
