package first

import "github.com/lbkit/lbkit/balancer"

// Builder builds first-available pickers. The zero value is ready to use
// and is safe for concurrent use by several pools.
type Builder struct{}

var _ balancer.Builder = Builder{}

// Build returns a picker that prefers ready's entries in order. It copies
// what it keeps.
func (Builder) Build(ready []balancer.Weighted) balancer.Picker {
	if len(ready) == 0 {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}
	eps := make([]*balancer.Endpoint, len(ready))
	for i, w := range ready {
		eps[i] = w.Endpoint
	}
	return &Picker{eps: eps}
}

// Picker picks the first healthy endpoint of its ready set. It is
// immutable and safe for concurrent use.
type Picker struct {
	eps []*balancer.Endpoint
}

// Pick returns the first endpoint that is healthy, or the first endpoint
// if none is; info is ignored. Outside panic mode that is always the
// first, after a single atomic load. It never blocks, never fails and does
// not allocate.
func (p *Picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	for _, ep := range p.eps {
		if ep.Healthy() {
			return ep, nil
		}
	}
	return p.eps[0], nil
}
