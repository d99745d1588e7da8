package sourcehash

import (
	"cmp"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// HashType selects how keys map to endpoints, as HAProxy's hash-type.
type HashType uint8

const (
	// Consistent maps keys through a Maglev table: a change to the ready
	// set moves only about 1/N of the keys.
	Consistent HashType = iota
	// MapBased maps keys through a table of runs of slots proportional to
	// the weights: exact and tiny, but a change to the ready set moves
	// many keys.
	MapBased
)

// String returns "consistent" or "map-based", as in HAProxy's
// configuration.
func (h HashType) String() string {
	switch h {
	case Consistent:
		return "consistent"
	case MapBased:
		return "map-based"
	}
	return fmt.Sprintf("HashType(%d)", uint8(h))
}

// MarshalText returns "consistent" or "map-based", the names String
// prints and configuration files use.
func (h HashType) MarshalText() ([]byte, error) {
	if h > MapBased {
		return nil, fmt.Errorf("sourcehash: unknown hash type %d", uint8(h))
	}
	return []byte(h.String()), nil
}

// UnmarshalText parses "consistent" or "map-based".
func (h *HashType) UnmarshalText(b []byte) error {
	for _, v := range []HashType{Consistent, MapBased} {
		if v.String() == string(b) {
			*h = v
			return nil
		}
	}
	return fmt.Errorf("sourcehash: unknown hash type %q: want consistent or map-based", b)
}

// MapResolution is the number of map-based slots the heaviest endpoint
// gets before the table is reduced by the greatest common divisor: 256,
// HAProxy's largest server weight.
const MapResolution = 256

// Builder builds source-hash pickers. Its zero value builds a consistent
// (Maglev) table of maglev.DefaultSize slots.
//
// Endpoints are identified by [balancer.HashAddrPort] of their address, so
// a client goes to the same backend in every build and in every balancer
// instance with the same ready set, whatever its order.
//
// Builder is a value; Build is safe for concurrent use.
type Builder struct {
	// HashType is Consistent (the default) or MapBased.
	HashType HashType
	// Size is the Consistent table's size: a prime larger than the number
	// of endpoints; keep it above 100 × that number for shares within 1%.
	// Zero means maglev.DefaultSize. MapBased ignores it.
	Size int
	// Rand, when set, is the source of keyless picks' randomness instead
	// of math/rand/v2's global functions, for reproducible tests and
	// simulations. A picker calls it from every goroutine that picks
	// without a key, so it must be safe for concurrent use unless the
	// picker is used by one goroutine at a time (*rand.PCG and
	// *rand.ChaCha8 are not safe).
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker over ready. For Consistent it is the same picker
// as [maglev.Builder] with the same Size builds (about 5 ms for 1000
// endpoints); for MapBased, O(n) plus up to 256 slots per endpoint. If
// the Builder is invalid (unknown HashType, Size not a prime above the
// number of endpoints), every pick fails with an error wrapping
// [balancer.ErrNoBackend] that says why.
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	switch b.HashType {
	case Consistent:
		return maglev.Builder{Size: b.Size, Rand: b.Rand}.Build(ready)
	case MapBased:
		return buildMap(ready, b.Rand)
	}
	return balancer.ErrPicker(fmt.Errorf("%w: sourcehash: unknown %v", balancer.ErrNoBackend, b.HashType))
}

func buildMap(ready []balancer.Weighted, src rand.Source) balancer.Picker {
	type entry struct {
		id    uint64
		w     float64
		ep    *balancer.Endpoint
		slots uint64
	}
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	ents := make([]entry, len(ready))
	maxW := 0.0
	for i, r := range ready {
		if !(r.Weight > 0) || math.IsInf(r.Weight, 0) {
			return balancer.ErrPicker(fmt.Errorf("%w: sourcehash: endpoint %v has weight %v", balancer.ErrNoBackend, r.Endpoint.Addr(), r.Weight))
		}
		ents[i] = entry{id: balancer.HashAddrPort(r.Endpoint.Addr()), w: r.Weight, ep: r.Endpoint}
		maxW = max(maxW, r.Weight)
	}
	slices.SortFunc(ents, func(a, b entry) int { return cmp.Compare(a.id, b.id) })
	var g, total uint64
	for i := range ents {
		ents[i].slots = max(1, uint64(math.Round(MapResolution*ents[i].w/maxW)))
		g = gcd(g, ents[i].slots)
		total += ents[i].slots
	}
	p := &MapPicker{eps: make([]*balancer.Endpoint, len(ents)), table: make([]uint32, 0, total/g), src: src}
	for i, e := range ents {
		p.eps[i] = e.ep
		for range e.slots / g {
			p.table = append(p.table, uint32(i))
		}
	}
	return p
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// MapPicker is the picker of a MapBased [Builder]. It is immutable and
// safe for concurrent use; Pick never blocks and does not allocate.
type MapPicker struct {
	table []uint32 // slot → endpoint rank (order of id)
	eps   []*balancer.Endpoint
	src   rand.Source // nil: math/rand/v2
}

// Size returns the number of slots in the map.
func (p *MapPicker) Size() int { return len(p.table) }

// Pick returns the endpoint owning the slot of info.Key: the key is mixed
// with [balancer.Mix64] (so sequential keys spread too) and scaled to the
// table by multiplication, ⌊mix(key) × Size / 2^64⌋. Without a key it
// picks a random slot. It never fails, never blocks and does not
// allocate.
func (p *MapPicker) Pick(info balancer.PickInfo) (*balancer.Endpoint, error) {
	var h uint64
	if info.HasKey {
		h = balancer.Mix64(info.Key)
	} else if p.src != nil {
		h = p.src.Uint64()
	} else {
		h = rand.Uint64()
	}
	slot, _ := bits.Mul64(h, uint64(len(p.table)))
	return p.eps[p.table[slot]], nil
}
