package rendezvous

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/lbkit/lbkit/balancer"
)

// Builder builds rendezvous-hashing pickers. Its zero value is ready to
// use. Endpoints are identified by
// [balancer.HashAddrPort] of their address, so a key goes to the same
// backend in every build and every balancer instance that has the same
// ready set, whatever its order.
//
// Builder is a value; Build is safe for concurrent use.
type Builder struct {
	// Rand, when set, is the source of keyless picks' randomness instead
	// of math/rand/v2's global functions, for reproducible tests and
	// simulations. A picker calls it from every goroutine that picks
	// without a key, so it must be safe for concurrent use unless the
	// picker is used by one goroutine at a time (*rand.PCG and
	// *rand.ChaCha8 are not safe).
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker over ready in O(n log n). Every pick from a
// ready set with a weight that is not positive and finite fails with an
// error wrapping [balancer.ErrNoBackend].
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	type entry struct {
		id uint64
		w  float64
		ep *balancer.Endpoint
	}
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	ents := make([]entry, len(ready))
	for i, r := range ready {
		if !(r.Weight > 0) || math.IsInf(r.Weight, 0) {
			return balancer.ErrPicker(errWeight)
		}
		ents[i] = entry{id: balancer.HashAddrPort(r.Endpoint.Addr()), w: r.Weight, ep: r.Endpoint}
	}
	// By weight, then id: groups of equal weight are contiguous, and the
	// order (hence any tie-break) does not depend on the order of ready.
	slices.SortFunc(ents, func(a, b entry) int {
		if c := cmp.Compare(a.w, b.w); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	p := &Picker{
		ids: make([]uint64, len(ents)),
		eps: make([]*balancer.Endpoint, len(ents)),
		cum: make([]float64, len(ents)),
		src: b.Rand,
	}
	sum := 0.0
	for i, e := range ents {
		p.ids[i], p.eps[i] = e.id, e.ep
		sum += e.w
		p.cum[i] = sum
		if i == 0 || e.w != ents[i-1].w {
			p.groups = append(p.groups, group{start: i, weight: e.w})
		}
	}
	return p
}

var errWeight = fmt.Errorf("rendezvous: weights must be positive and finite: %w", balancer.ErrNoBackend)

type group struct {
	start  int // first entry; the group ends where the next begins
	weight float64
}

// Picker picks by rendezvous hashing. It is immutable and safe for
// concurrent use; Pick never blocks and does not allocate.
type Picker struct {
	ids    []uint64             // by weight, then id
	eps    []*balancer.Endpoint // same order
	cum    []float64            // running sum of weights, for keyless picks
	groups []group
	src    rand.Source // nil: math/rand/v2
}

// Pick returns the endpoint with the highest score for info.Key, or a
// random endpoint chosen by weight when info has no key. It never fails,
// never blocks and does not allocate; with a key it costs O(n).
func (p *Picker) Pick(info balancer.PickInfo) (*balancer.Endpoint, error) {
	if !info.HasKey {
		// The first entry whose running sum exceeds x.
		var r uint64
		if p.src != nil {
			r = p.src.Uint64()
		} else {
			r = rand.Uint64()
		}
		x := float64(r>>11) * 0x1p-53 * p.cum[len(p.cum)-1]
		lo, hi := 0, len(p.cum)-1
		for lo < hi {
			mid := int(uint(lo+hi) >> 1)
			if p.cum[mid] <= x {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		return p.eps[lo], nil
	}
	return p.eps[p.winner(balancer.Mix64(info.Key))], nil
}

// winner returns the index of the highest-scoring entry for the mixed
// key k.
func (p *Picker) winner(k uint64) int {
	best, bestScore := 0, -1.0
	for g, gr := range p.groups {
		end := len(p.ids)
		if g+1 < len(p.groups) {
			end = p.groups[g+1].start
		}
		// Within a group the score grows with h: find the highest h.
		ids := p.ids[gr.start:end]
		top, topH := 0, balancer.Mix64(k^ids[0])
		for i, id := range ids[1:] {
			if h := balancer.Mix64(k ^ id); h > topH {
				top, topH = i+1, h
			}
		}
		top += gr.start
		if len(p.groups) == 1 {
			return top
		}
		if s := score(topH, gr.weight); s > bestScore {
			best, bestScore = top, s
		}
	}
	return best
}

// score returns -w / ln(u) for u = (⌊h / 2^11⌋ + 1) / 2^53 in (0, 1],
// which is exact in a float64; math.Log keeps full precision near 1, where
// the likely winners are.
func score(h uint64, w float64) float64 {
	u := float64(h>>11+1) * 0x1p-53
	return w / -math.Log(u)
}
