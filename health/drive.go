package health

import (
	"net/netip"
	"sync"

	"github.com/lbkit/lbkit/balancer"
)

// Drive keeps p in step with the checker until stop is called: a target
// that is unhealthy, ejected or not yet known is marked unhealthy in the
// pool (it leaves the ready set); one that becomes healthy is marked
// healthy (the pool slow-starts it); an agent's drain or maint drains it
// and up or ready undrains it; an agent's weight sets its weight. Drive
// applies the current state of every target before it returns, and the
// state of each target again after every event for it.
//
// Targets that are not members of p are ignored, and so are members that
// are not targets; a removed target is left as it is in the pool. Pool
// updates run on the caller's goroutine during Drive and on the checker's
// event goroutine afterwards. After stop returns, Drive changes p no more;
// stop is idempotent.
func (c *Checker) Drive(p *balancer.Pool) (stop func()) {
	d := &driver{c: c, p: p}
	unsub := c.Subscribe(func(e Event) { d.apply(e.Target) })
	for _, a := range c.Targets() {
		d.apply(a)
	}
	return func() {
		unsub()
		d.mu.Lock()
		d.stopped = true
		d.mu.Unlock()
	}
}

type driver struct {
	c       *Checker
	p       *balancer.Pool
	mu      sync.Mutex // serializes applies so the last one sees the newest state
	stopped bool
}

func (d *driver) apply(addr netip.AddrPort) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	tg := (*d.c.targets.Load())[addr]
	if tg == nil {
		return
	}
	tg.mu.Lock()
	draining := tg.state == Draining
	healthy := tg.servingLocked()
	weight := tg.weight
	tg.mu.Unlock()
	if weight != 0 {
		d.p.SetWeight(addr, weight)
	}
	d.p.SetHealthy(addr, healthy)
	d.p.SetDraining(addr, draining)
}
