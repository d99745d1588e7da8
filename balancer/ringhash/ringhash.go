package ringhash

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"

	"github.com/lbkit/lbkit/balancer"
)

const (
	// DefaultPointsPerWeight is how many points an endpoint gets per unit
	// of effective weight from a zero Builder: 160, as in Ketama and
	// nginx's "hash ... consistent".
	DefaultPointsPerWeight = 160
	// DefaultMaxRingSize caps the ring of a zero Builder: 2^21 points, or
	// at most 32 MiB of points and index. Envoy's cap is 8M points; lbkit keeps
	// it lower because a ring that large is only reached with large or
	// extreme weights, where it buys little.
	DefaultMaxRingSize = 1 << 21
)

// ErrConfig is wrapped by the error of every pick from a picker that
// [Builder.Build] could not build because the Builder is invalid.
var ErrConfig = errors.New("ringhash: invalid configuration")

// Builder builds ring-hash pickers. The zero value builds a plain
// consistent-hash ring (no load bound) with DefaultPointsPerWeight points
// per unit of effective weight.
//
// How many points an endpoint gets is a trade-off. An endpoint with k
// points receives its share of keys within about 1/√k (160 points: ±8%);
// more points cost memory (12 to 16 bytes each with the index), build
// time and cache misses.
// A fixed number of points per unit of weight (the default) keeps every
// endpoint's points unchanged when others join or leave, so only the
// changed endpoint's keys move; a MinRingSize, as in Envoy, buys a better
// spread for small sets at the price of rescaling every endpoint (and
// moving more keys) when the set changes.
//
// Builder is a value; Build is safe for concurrent use.
type Builder struct {
	// PointsPerWeight is the number of points per unit of effective
	// weight; every endpoint gets at least one. Zero means
	// DefaultPointsPerWeight. Effective weights are what a pool passes:
	// the configured Backend.Weight (1 when unset) scaled by slow start,
	// so pools configured with large weights (say 100 each) should lower
	// it, or the ring grows to MaxRingSize.
	PointsPerWeight float64
	// MinRingSize, when set, scales the points up so the ring has at
	// least this many, as Envoy's minimum_ring_size: the lightest
	// endpoint gets ⌈MinRingSize × its share of the weight⌉ points and
	// every other endpoint proportionally more. Zero means no minimum.
	MinRingSize int
	// MaxRingSize caps the number of points, as Envoy's
	// maximum_ring_size, by scaling every endpoint down; every endpoint
	// keeps at least one point. Zero means DefaultMaxRingSize.
	MaxRingSize int
	// Epsilon is the load bound's slack ε ≥ 0: no endpoint takes new work
	// while it has ⌈(1+ε) × its weighted share of the in-flight work⌉ or
	// more in flight. 0.25 matches HAProxy's "hash-balance-factor 125".
	// Zero disables the bound: keys always go to their own endpoint.
	Epsilon float64
	// Rand, when set, is the source of keyless picks' randomness instead
	// of math/rand/v2's global functions, for reproducible tests and
	// simulations. A picker calls it from every goroutine that picks
	// without a key, so it must be safe for concurrent use unless the
	// picker is used by one goroutine at a time (*rand.PCG and
	// *rand.ChaCha8 are not safe).
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker over ready. It costs O(n log n + P) for n
// endpoints and a ring of P points (about 6 ms for 1000 endpoints of
// weight 1 with the defaults) and allocates about 28 bytes per point, of
// which the picker keeps 12 to 16. If the Builder is invalid (negative or
// non-finite values, MinRingSize above MaxRingSize), every pick fails with
// an error wrapping [balancer.ErrNoBackend] and [ErrConfig].
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	p, err := b.build(ready)
	if err != nil {
		return balancer.ErrPicker(fmt.Errorf("%w: %w", balancer.ErrNoBackend, err))
	}
	return p
}

func (b Builder) build(ready []balancer.Weighted) (*Picker, error) {
	n := len(ready)
	switch {
	case b.MinRingSize < 0 || b.MaxRingSize < 0:
		return nil, fmt.Errorf("%w: negative ring size", ErrConfig)
	case b.MinRingSize > 0 && b.MaxRingSize > 0 && b.MinRingSize > b.MaxRingSize:
		return nil, fmt.Errorf("%w: MinRingSize %d above MaxRingSize %d", ErrConfig, b.MinRingSize, b.MaxRingSize)
	case !(b.PointsPerWeight >= 0) || math.IsInf(b.PointsPerWeight, 0):
		return nil, fmt.Errorf("%w: PointsPerWeight %v must be a finite number ≥ 0", ErrConfig, b.PointsPerWeight)
	case !(b.Epsilon >= 0) || math.IsInf(b.Epsilon, 0):
		return nil, fmt.Errorf("%w: Epsilon %v must be a finite number ≥ 0", ErrConfig, b.Epsilon)
	case n == 0:
		return nil, errors.New("ringhash: empty ready set")
	case n > math.MaxUint32:
		return nil, fmt.Errorf("ringhash: %d endpoints is too many", n)
	}
	perWeight, maxRing := b.PointsPerWeight, b.MaxRingSize
	if perWeight == 0 {
		perWeight = DefaultPointsPerWeight
	}
	if maxRing == 0 {
		maxRing = DefaultMaxRingSize
	}

	// Endpoints in order of id: a point's low bits hold this rank, so
	// sorting the points orders equal positions by id, whatever the order
	// of ready.
	type entry struct {
		id uint64
		w  float64
		ep *balancer.Endpoint
	}
	ents := make([]entry, n)
	total, minW := 0.0, math.Inf(1)
	for i, r := range ready {
		w := r.Weight
		if !(w > 0) || math.IsInf(w, 0) {
			return nil, fmt.Errorf("ringhash: endpoint %v has weight %v", r.Endpoint.Addr(), w)
		}
		ents[i] = entry{id: balancer.HashAddrPort(r.Endpoint.Addr()), w: w, ep: r.Endpoint}
		total += w
		minW = min(minW, w)
	}
	slices.SortFunc(ents, func(a, b entry) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})

	// Points per unit of weight: fixed, raised by Envoy's minimum sizing
	// (the lightest endpoint gets ⌈MinRingSize × its share⌉), capped by
	// MaxRingSize.
	scale := perWeight
	if b.MinRingSize > 0 {
		minShare := minW / total
		scale = math.Max(scale, math.Ceil(minShare*float64(b.MinRingSize))/minShare/total)
	}
	scale = math.Min(scale, float64(maxRing)/total)
	counts := make([]int, n)
	size := 0
	for i, e := range ents {
		counts[i] = max(1, int(math.Round(scale*e.w)))
		size += counts[i]
	}

	rankBits := uint(bits.Len(uint(n - 1)))
	mask := uint64(1)<<rankBits - 1
	raw := make([]uint64, 0, size)
	eps := make([]*balancer.Endpoint, n)
	for i, e := range ents {
		eps[i] = e.ep
		// A splitmix64 stream seeded by the endpoint's id: point j is
		// Mix64(id + (j+1)·γ), so an endpoint's first k points are the
		// same whatever k is.
		s := e.id
		for range counts[i] {
			s += 0x9e3779b97f4a7c15
			raw = append(raw, balancer.Mix64(s)&^mask|uint64(i))
		}
	}

	// Sort by bucket (the top bits of a position; one to two buckets per
	// point, so most buckets hold zero or one point) with a counting
	// sort, then by value within each bucket. The bucket starts are the
	// index a pick jumps through.
	bucketBits := uint(bits.Len(uint(size)))
	buckets := 1 << bucketBits
	shift := 64 - bucketBits
	index := make([]uint32, buckets+1)
	for _, pt := range raw {
		index[pt>>shift+1]++
	}
	for k := range buckets {
		index[k+1] += index[k]
	}
	next := slices.Clone(index[:buckets])
	points := make([]uint64, size+1)
	for _, pt := range raw {
		k := pt >> shift
		points[next[k]] = pt
		next[k]++
	}
	for k := range buckets {
		b := points[index[k]:index[k+1]]
		for i := 1; i < len(b); i++ { // insertion sort: b is tiny
			for j := i; j > 0 && b[j] < b[j-1]; j-- {
				b[j], b[j-1] = b[j-1], b[j]
			}
		}
	}
	// The sentinel after the last point is ≥ every position and belongs
	// to the first point's endpoint: walking off the top wraps around
	// without a branch.
	points[size] = ^mask | points[0]&mask
	p := &Picker{points: points, index: index[:buckets], shift: shift, mask: mask, eps: eps, src: b.Rand}

	if b.Epsilon > 0 {
		p.capacity = make([]float64, n)
		for i, e := range ents {
			// Rounded down by a hair, so float error can only make
			// the bound stricter.
			p.capacity[i] = (1 + b.Epsilon) * e.w / total * (1 - 1e-12)
		}
	}
	return p, nil
}

// Picker picks from a ring built by [Builder.Build]. It is immutable and
// safe for concurrent use; Pick never blocks and does not allocate.
type Picker struct {
	// points are sorted: a position in the high bits, the owner's rank in
	// the low bits (mask), then a sentinel.
	points   []uint64
	index    []uint32 // bucket (position >> shift) → its first point
	shift    uint
	mask     uint64
	eps      []*balancer.Endpoint // by rank (order of id)
	capacity []float64            // by rank: (1+ε)·w/W; nil without a load bound
	src      rand.Source          // nil: math/rand/v2
}

// RingSize returns the number of points on the ring.
func (p *Picker) RingSize() int { return len(p.points) - 1 }

// Pick returns the endpoint owning the first point at or after the
// position of info.Key (mixed with [balancer.Mix64], so small or
// sequential keys spread too), or of a random position when info has no
// key. With a load bound it walks on past endpoints at capacity (see the
// package documentation). It never fails, never blocks and does not
// allocate.
func (p *Picker) Pick(info balancer.PickInfo) (*balancer.Endpoint, error) {
	var h uint64
	if info.HasKey {
		h = balancer.Mix64(info.Key)
	} else if p.src != nil {
		h = p.src.Uint64()
	} else {
		h = rand.Uint64()
	}
	i := p.locate(h &^ p.mask)
	if p.capacity == nil {
		return p.eps[p.points[i]&p.mask], nil
	}
	return p.bounded(i), nil
}

// locate returns the index of the first point ≥ pos; the sentinel's
// index when pos is above the last point.
func (p *Picker) locate(pos uint64) int {
	pts := p.points
	i := int(p.index[pos>>p.shift])
	// Buckets hold fewer than one point on average: two branch-free
	// steps settle almost every pick; the loop catches crowded buckets.
	_, lt := bits.Sub64(pts[i], pos, 0)
	i += int(lt)
	_, lt = bits.Sub64(pts[i], pos, 0)
	i += int(lt)
	for pts[i] < pos {
		i++
	}
	return i
}

// bounded walks clockwise from point i to the first endpoint under
// capacity.
func (p *Picker) bounded(i int) *balancer.Endpoint {
	total := int64(-1) // summed lazily
	limit := 4*len(p.eps) + 16
	last := len(p.points) - 1 // the sentinel
	if i == last {
		i = 0
	}
	for range min(limit, last) {
		r := p.points[i] & p.mask
		ep := p.eps[r]
		load := max(ep.InFlight(), 0)
		// T ≥ load: if the endpoint has room even then, it has room.
		if float64(load) < math.Ceil(p.capacity[r]*float64(load+1)) {
			return ep
		}
		if total < 0 {
			total = p.totalInFlight()
		}
		if float64(load) < math.Ceil(p.capacity[r]*float64(total+1)) {
			return ep
		}
		if i++; i == last {
			i = 0
		}
	}
	// Concurrent picks kept every endpoint we passed at capacity: take
	// the one with the least work in flight per unit of capacity.
	best, bestLoad := 0, math.Inf(1)
	for r, ep := range p.eps {
		if l := float64(max(ep.InFlight(), 0)) / p.capacity[r]; l < bestLoad {
			best, bestLoad = r, l
		}
	}
	return p.eps[best]
}

func (p *Picker) totalInFlight() int64 {
	var t int64
	for _, ep := range p.eps {
		t += max(ep.InFlight(), 0)
	}
	return t
}
