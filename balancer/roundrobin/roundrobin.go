package roundrobin

import (
	"math/rand/v2"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/internal/shard"
)

// Builder builds round-robin pickers. The zero value is ready to use and
// is safe for concurrent use by several pools.
type Builder struct {
	// Rand, when set, is the source of the starting offsets instead of
	// math/rand/v2's global functions, and makes picks deterministic: the
	// picker then uses a single counter, so concurrent picks contend on
	// one cache line. Meant for tests and simulations; Build calls it, Pick
	// does not.
	Rand rand.Source
}

var _ balancer.Builder = Builder{}

// Build returns a picker that rotates over ready in order, starting at
// random offsets. Weights are ignored. Build copies what it keeps.
func (b Builder) Build(ready []balancer.Weighted) balancer.Picker {
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	eps := make([]*balancer.Endpoint, len(ready))
	for i, w := range ready {
		eps[i] = w.Endpoint
	}
	return &Picker{eps: eps, ctr: shard.New(len(eps), b.Rand)}
}

// Picker hands out its endpoints in turn. It is immutable apart from its
// counters and safe for concurrent use.
type Picker struct {
	eps []*balancer.Endpoint
	ctr shard.Counter
}

// Pick returns the next endpoint in rotation; info is ignored. It never
// blocks, never fails and does not allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	if len(p.eps) == 1 {
		return p.eps[0], nil
	}
	return p.eps[p.ctr.Next()], nil
}
