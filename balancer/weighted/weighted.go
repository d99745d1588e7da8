package weighted

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/internal/shard"
)

// MaxSchedule bounds the schedule's cycle: weights that reduce to an
// exact cycle of at most MaxSchedule slots get it; others are apportioned
// over exactly MaxSchedule slots (over as many slots as endpoints for
// ready sets larger than that).
const MaxSchedule = 1 << 16

// Builder builds weighted round-robin pickers. The zero value is ready to
// use and is safe for concurrent use by several pools.
type Builder struct {
	// Rand, when set, is the source of the starting offsets instead of
	// math/rand/v2's global functions, and makes picks deterministic: the
	// picker then uses a single counter, so concurrent picks contend on
	// one cache line. Meant for tests and simulations; Build calls it, Pick
	// does not.
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker that cycles through a precomputed schedule of
// ready in proportion to the weights. It copies what it keeps and takes
// O(n + cycle length) time and memory (at most 4 × MaxSchedule bytes for
// the schedule).
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	eps := make([]*balancer.Endpoint, len(ready))
	weights := make([]float64, len(ready))
	for i, w := range ready {
		eps[i] = w.Endpoint
		weights[i] = weight(w.Weight)
	}
	sched := schedule(slots(weights))
	return &Picker{eps: eps, sched: sched, ctr: shard.New(len(sched), b.Rand)}
}

// Picker hands out endpoints in the order of its schedule. It is
// immutable apart from its counters and safe for concurrent use.
type Picker struct {
	eps   []*balancer.Endpoint
	sched []uint32
	ctr   shard.Counter
}

// Pick returns the next endpoint of the schedule; info is ignored. It
// never blocks, never fails and does not allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	if len(p.eps) == 1 {
		return p.eps[0], nil
	}
	return p.eps[p.sched[p.ctr.Next()]], nil
}

// Slots returns how many slots of the schedule's cycle each endpoint has,
// in ready-set order. The shares picks follow are Slots()[i] / the sum.
func (p *Picker) Slots() []int {
	c := make([]int, len(p.eps))
	for _, i := range p.sched {
		c[i]++
	}
	return c
}

// slots turns weights into per-endpoint slot counts: exact small integers
// when the weights allow it, else a largest-remainder apportionment of
// MaxSchedule slots.
func slots(weights []float64) []int {
	if c := exactSlots(weights); c != nil {
		return c
	}
	total := max(MaxSchedule, len(weights))
	sum := 0.0
	for _, w := range weights {
		sum += w
	}
	counts := make([]int, len(weights))
	rest := make([]int, len(weights))
	frac := make([]float64, len(weights))
	left := total
	for i, w := range weights {
		q := w / sum * float64(total)
		counts[i] = int(q)
		frac[i] = q - math.Floor(q)
		left -= counts[i]
		rest[i] = i
	}
	slices.SortStableFunc(rest, func(a, b int) int {
		switch {
		case frac[a] > frac[b]:
			return -1
		case frac[a] < frac[b]:
			return 1
		}
		return 0
	})
	for _, i := range rest[:max(0, min(left, len(rest)))] {
		counts[i]++
	}
	return counts
}

// exactSlots returns integer slot counts proportional to weights, or nil
// if the weights are not all integers after scaling by some power of ten
// up to 10⁴, or the reduced cycle would exceed MaxSchedule.
func exactSlots(weights []float64) []int {
	for scale := 1.0; scale <= 1e4; scale *= 10 {
		counts := make([]int, len(weights))
		g, sum, ok := 0, 0.0, true
		for i, w := range weights {
			v := w * scale
			r := math.Round(v)
			if !(r >= 1) || math.Abs(v-r) > 1e-9*r || r > 1<<53 {
				ok = false
				break
			}
			counts[i] = int(r)
			sum += r
			g = gcd(g, counts[i])
		}
		if !ok {
			continue
		}
		if sum/float64(g) > MaxSchedule {
			return nil
		}
		for i := range counts {
			counts[i] /= g
		}
		return counts
	}
	return nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// schedule lays out counts[i] slots for each endpoint i in stride order:
// slot k of endpoint i lands at position ⌊(2k+1)·L / (2·counts[i])⌋ of the
// cycle of length L = Σ counts, and slots that land on the same position
// keep ready-set order (a counting sort). Every endpoint's slots are thus
// spread evenly over the cycle.
func schedule(counts []int) []uint32 {
	length := 0
	for _, c := range counts {
		length += c
	}
	at := func(k, c int) int { return int(uint64(2*k+1) * uint64(length) / uint64(2*c)) }
	start := make([]uint32, length+1) // start[p]: first output index for position p
	for _, c := range counts {
		for k := range c {
			start[at(k, c)+1]++
		}
	}
	for p := 1; p <= length; p++ {
		start[p] += start[p-1]
	}
	sched := make([]uint32, length)
	for i, c := range counts {
		for k := range c {
			p := at(k, c)
			sched[start[p]] = uint32(i)
			start[p]++
		}
	}
	return sched
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
