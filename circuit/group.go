package circuit

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Config sets the thresholds of a [Group]: one set for the pool as a whole
// and one that every member gets. The zero value limits nothing.
type Config struct {
	// Pool limits the work on the whole pool (Envoy's cluster-level
	// circuit breakers). Its RetryBudget is the one that keeps retries
	// from multiplying the load in an outage.
	Pool Thresholds
	// Member limits the work on each member (HAProxy's per-server
	// maxconn and maxqueue).
	Member Thresholds
}

// Group is the circuit breakers of one pool: a [Breaker] for the pool and
// one per member, created on first use. [Group.Acquire] admits work only
// if both the pool's and the member's thresholds allow it.
//
// A front-end adopts it in a few lines:
//
//	m := g.Member(ep.Addr())
//	if err := g.Acquire(m, circuit.Requests); err != nil {
//		return err // errors.Is(err, circuit.ErrOpen)
//	}
//	defer g.Release(m, circuit.Requests)
//
// and, before each retry, g.Acquire(m, circuit.Retries) under the same
// rule. All methods are safe for concurrent use.
type Group struct {
	pool    Breaker
	member  atomic.Pointer[Thresholds]
	mu      sync.Mutex
	members sync.Map // netip.AddrPort → *Breaker
}

// NewGroup returns a group enforcing cfg.
func NewGroup(cfg Config) (*Group, error) {
	g := new(Group)
	if err := g.Update(cfg); err != nil {
		return nil, err
	}
	return g, nil
}

// Update replaces the group's thresholds, for the pool and every member;
// work in flight is kept and counts against the new ones. Invalid
// thresholds change nothing.
func (g *Group) Update(cfg Config) error {
	if err := cfg.Pool.Validate(); err != nil {
		return err
	}
	if err := cfg.Member.Validate(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	p, m := cfg.Pool, cfg.Member
	g.pool.thr.Store(&p)
	g.member.Store(&m)
	g.members.Range(func(_, v any) bool {
		v.(*Breaker).thr.Store(&m)
		return true
	})
	return nil
}

// Pool returns the breaker of the whole pool.
func (g *Group) Pool() *Breaker { return &g.pool }

// Member returns the breaker of the member at addr, creating it with the
// group's member thresholds on first use.
func (g *Group) Member(addr netip.AddrPort) *Breaker {
	if v, ok := g.members.Load(addr); ok {
		return v.(*Breaker)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if v, ok := g.members.Load(addr); ok {
		return v.(*Breaker)
	}
	b := new(Breaker)
	if t := g.member.Load(); t != nil {
		b.thr.Store(t)
	}
	g.members.Store(addr, b)
	return b
}

// Forget drops the breaker of the member at addr (a member that left the
// pool). Work still in flight on it is released on the old breaker.
func (g *Group) Forget(addr netip.AddrPort) { g.members.Delete(addr) }

// Acquire admits one unit of k on member m (from [Group.Member]; nil means
// the pool alone) if both the pool's and the member's thresholds allow it.
// On refusal nothing is held and the error wraps [ErrOpen]. Every nil
// return must be matched by one [Group.Release] with the same m and k.
func (g *Group) Acquire(m *Breaker, k Kind) error {
	if err := g.pool.Acquire(k); err != nil {
		return err
	}
	if m != nil {
		if err := m.Acquire(k); err != nil {
			g.pool.Release(k)
			return err
		}
	}
	return nil
}

// Release gives back one unit of k admitted by [Group.Acquire].
func (g *Group) Release(m *Breaker, k Kind) {
	if m != nil {
		m.Release(k)
	}
	g.pool.Release(k)
}
