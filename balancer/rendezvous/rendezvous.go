// Package rendezvous implements rendezvous hashing, also called highest
// random weight (HRW) hashing (Thaler and Ravishankar, 1996), weighted
// with the logarithmic method (Schindelhauer and Schomaker, "Weighted
// Distributed Hash Tables", 2005; the method behind Ceph's straw2).
//
// For a key k, every endpoint i draws a pseudo-random number
// u = h(k, i) / 2^64 in (0, 1) and scores -w_i / ln(u); the key goes to
// the highest score. The scores are exponential random variables with
// rates proportional to 1/w_i, so endpoint i wins with probability
// exactly w_i / Σw. Removing an endpoint moves only the keys it won (the
// ideal 1/N, with no ring or table to approximate it), and adding one
// moves only the keys it now wins.
//
// A tiny worked example with equal weights, where the score is monotone
// in h: for key 7, h(7, A) = 0.61, h(7, B) = 0.93, h(7, C) = 0.20 (as
// fractions of 2^64), so B wins. Remove C: B still wins. Remove B: A wins,
// and only the keys B won moved.
//
// Cost: a pick hashes the key with every endpoint, O(n): about 1 ns per
// endpoint, so a few ns for 3 endpoints and about 1 µs for 1000. That is
// fine for the small sets rendezvous hashing suits (DNS answers, a few
// dozen mirrors); for hundreds of endpoints and hot paths prefer maglev or
// ringhash, which are O(1) per pick after an O(n log n) build. Endpoints
// of equal effective weight form a group in which the highest hash wins,
// so only one logarithm per distinct weight is taken (one or two groups
// in the common case, a few more during slow start). Picks without a key
// choose by weight at random in O(log n).
package rendezvous

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/lbkit/lbkit/balancer"
)

// Builder builds rendezvous-hashing pickers. It has no options: its zero
// value is ready to use. Endpoints are identified by
// [balancer.HashAddrPort] of their address, so a key goes to the same
// backend in every build and every balancer instance that has the same
// ready set, whatever its order.
//
// Builder is a value; Build is safe for concurrent use.
type Builder struct{}

var _ balancer.Builder = Builder{}

// Build returns a picker over ready in O(n log n). Every pick from a
// ready set with a weight that is not positive and finite fails with an
// error wrapping [balancer.ErrNoBackend].
func (Builder) Build(ready []balancer.Weighted) balancer.Picker {
	type entry struct {
		id uint64
		w  float64
		ep *balancer.Endpoint
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
}

// Pick returns the endpoint with the highest score for info.Key, or a
// random endpoint chosen by weight when info has no key. It never fails,
// never blocks and does not allocate; with a key it costs O(n).
func (p *Picker) Pick(info balancer.PickInfo) (*balancer.Endpoint, error) {
	if !info.HasKey {
		// The first entry whose running sum exceeds x.
		x := rand.Float64() * p.cum[len(p.cum)-1]
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
