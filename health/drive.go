package health

import (
	"net/netip"
	"sync"

	"github.com/lbkit/lbkit/balancer"
)

// Drive keeps p in step with the checker until stop is called or the
// checker is closed: a target that is unhealthy, ejected or not yet known
// is marked unhealthy in the pool (it leaves the ready set); one that
// becomes healthy is marked healthy (the pool slow-starts it); an agent's
// drain or maint drains it and up or ready undrains it; an agent's weight
// sets its weight.
//
// Drive applies the current state of every target before it returns, and
// a target's state again after each of its events. It also watches the
// pool's snapshots, so a member added to the pool after its target (which
// joins healthy, as pool members do) is corrected at once rather than at
// the target's next event. Targets that are not members of p are
// ignored, and so are members that are not targets; a removed target is
// left as it is in the pool.
//
// Pool updates run on the caller's goroutine during Drive, then on the
// checker's event goroutine and on one goroutine Drive starts. After stop
// returns, Drive changes p no more and that goroutine has ended; stop is
// idempotent.
func (c *Checker) Drive(p *balancer.Pool) (stop func()) {
	d := &driver{c: c, p: p, done: make(chan struct{})}
	unsub := c.Subscribe(func(e Event) { d.apply(e.Target) })
	for _, a := range c.Targets() {
		d.apply(a)
	}
	var wg sync.WaitGroup
	c.wg.Add(1)
	wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer wg.Done()
		d.watch()
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			unsub()
			close(d.done)
			d.mu.Lock()
			d.stopped = true
			d.mu.Unlock()
			wg.Wait()
		})
	}
}

type driver struct {
	c       *Checker
	p       *balancer.Pool
	done    chan struct{}
	mu      sync.Mutex // serializes applies so the last one sees the newest state
	stopped bool
}

// watch corrects ready members that the checker does not consider fit,
// whenever the pool publishes a new snapshot.
func (d *driver) watch() {
	s := d.p.Snapshot()
	for {
		select {
		case <-d.done:
			return
		case <-d.c.ctx.Done():
			return
		case <-s.Changed():
		}
		s = d.p.Snapshot()
		targets := *d.c.targets.Load()
		for _, w := range s.Ready {
			ep := w.Endpoint
			tg := targets[ep.Addr()]
			if tg == nil {
				continue
			}
			tg.mu.Lock()
			wrong := !tg.servingLocked() && ep.Healthy() || (tg.state == Draining) != ep.Draining() ||
				tg.weight != 0 && tg.weight != ep.Weight()
			tg.mu.Unlock()
			if wrong {
				d.apply(ep.Addr())
			}
		}
	}
}

// apply sets addr's health, drain and weight in the pool from the
// target's current state.
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
