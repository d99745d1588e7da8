package health

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Template is the health check applied to every member of a pool the
// checker follows (see [Checker.Follow]): the fields of [Target] but the
// member's address and weight, which come from the pool, plus an optional
// per-member override. Every field has the useful zero value documented on
// the same field of Target.
type Template struct {
	Probe        Prober
	Interval     time.Duration
	Timeout      time.Duration
	Jitter       time.Duration
	DownInterval time.Duration
	FastInterval time.Duration
	Rise, Fall   int
	// Initial is the state of a member before its first probe. Unknown
	// (the zero value) keeps it out of the ready set until then; the
	// first probe runs at once, so that is milliseconds.
	Initial State

	// Override, when set, adjusts the target made for one member: a
	// different probe path for a member whose metadata asks for it, a
	// longer timeout for a remote zone. It runs when the member joins the
	// pool and when Follow is called again; it must not keep t.
	Override func(b balancer.Backend, t *Target)
}

// target returns the Target for member b.
func (tm *Template) target(b balancer.Backend) Target {
	t := Target{
		Addr: b.Addr, Probe: tm.Probe, Interval: tm.Interval, Timeout: tm.Timeout, Jitter: tm.Jitter,
		DownInterval: tm.DownInterval, FastInterval: tm.FastInterval, Rise: tm.Rise, Fall: tm.Fall,
		Initial: tm.Initial, Weight: b.Weight,
	}
	if tm.Override != nil {
		tm.Override(b, &t)
		t.Addr = b.Addr
	}
	return t
}

// follower is the checker's record of one followed pool.
type follower struct {
	pool *balancer.Pool
	tmpl Template // guarded by Checker.mu
	gen  uint64   // bumped by every Follow of this pool, guarded by Checker.mu
	seen []*balancer.Endpoint
	done chan struct{}
}

// ErrNotFollowed is returned by [Checker.Unfollow] for a pool the checker
// does not follow.
var ErrNotFollowed = errors.New("health: pool not followed")

// Follow makes the checker check every member of p with tmpl, and keep p
// in step: members the probes have not judged yet are [balancer.HealthUnknown]
// (out of the ready set), failing or ejected ones [balancer.Unhealthy],
// passing ones [balancer.Healthy] (a first verdict at full weight, a
// recovery slow-starting); an agent's drain drains and its weight sets the
// member's weight. Members that join p later are checked from the moment
// they join, with no other call; members that leave stop being checked.
// Follow also makes the checker p's [balancer.Observer], so outcomes that
// front-ends report through [balancer.Endpoint.Done] feed passive outlier
// detection.
//
// Calling Follow again for p replaces the template: targets keep their
// state, and the new schedule applies at once. One checker may follow
// several pools; a backend address in several of them is one target (the
// template of the pool that last added or re-templated it applies) whose
// state is applied to every pool that has it. Follow returns an error if
// the template is invalid or the checker is closed. It starts one
// goroutine per pool, which ends with [Checker.Unfollow] or
// [Checker.Close].
func (c *Checker) Follow(p *balancer.Pool, tmpl Template) error {
	probe := tmpl.target(balancer.Backend{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 1)})
	if err := probe.validate(); err != nil {
		return fmt.Errorf("health: pool %s: template: %w", p.Name(), err)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	f := c.followers[p]
	fresh := f == nil
	if fresh {
		f = &follower{pool: p, done: make(chan struct{})}
		c.followers[p] = f
	}
	f.tmpl = tmpl
	f.gen++
	// Members that join from now on wait for their first verdict.
	p.SetJoinHealth(joinHealth(tmpl))
	p.SetObserver(c)
	snap := p.Snapshot()
	c.reconcileLocked(f, snap.Members, true)
	c.mu.Unlock()
	if fresh {
		c.wg.Add(1)
		go c.follow(f, snap)
	}
	return nil
}

// joinHealth is the pool health of a member that joins a pool followed
// with tmpl.
func joinHealth(tmpl Template) balancer.Health {
	switch {
	case tmpl.Initial == Healthy, tmpl.Probe == nil && tmpl.Initial == Unknown:
		return balancer.Healthy
	case tmpl.Initial == Unhealthy:
		return balancer.Unhealthy
	}
	return balancer.HealthUnknown
}

// Unfollow stops following p: its members stop being checked (unless
// another followed pool or [Checker.SetTarget] has them) and p keeps the
// health it has, and no longer reports outcomes to the checker.
func (c *Checker) Unfollow(p *balancer.Pool) error {
	c.mu.Lock()
	f := c.followers[p]
	if f == nil {
		c.mu.Unlock()
		return ErrNotFollowed
	}
	delete(c.followers, p)
	close(f.done)
	c.reconcileLocked(f, nil, false)
	c.mu.Unlock()
	if p.Observer() == balancer.Observer(c) {
		p.SetObserver(nil)
	}
	p.SetJoinHealth(balancer.Healthy)
	return nil
}

// Followed returns the pools the checker follows.
func (c *Checker) Followed() []*balancer.Pool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*balancer.Pool, 0, len(c.followers))
	for p := range c.followers {
		out = append(out, p)
	}
	return out
}

// follow is a followed pool's goroutine: it reconciles the targets with
// the pool's members whenever the membership changes after s, the
// snapshot Follow reconciled with.
func (c *Checker) follow(f *follower, s *balancer.Snapshot) {
	defer c.wg.Done()
	for {
		select {
		case <-f.done:
			return
		case <-c.ctx.Done():
			return
		case <-s.Changed():
		}
		s = f.pool.Snapshot()
		c.mu.Lock()
		select {
		case <-f.done:
		default:
			if !c.closed {
				c.reconcileLocked(f, s.Members, false)
			}
		}
		c.mu.Unlock()
	}
}

// reconcileLocked makes the targets owned by f those of members: new
// members get a target (or join an existing one), members gone give
// theirs up (removed when no pool and no SetTarget holds it). With
// retemplate, existing targets of f's members take the template again.
// c.mu must be held.
func (c *Checker) reconcileLocked(f *follower, members []*balancer.Endpoint, retemplate bool) {
	if !retemplate && sameMembers(f.seen, members) {
		return
	}
	f.seen = members
	old := *c.targets.Load()
	next := make(map[netip.AddrPort]*target, len(old)+len(members))
	for a, tg := range old {
		next[a] = tg
	}
	want := make(map[netip.AddrPort]*balancer.Endpoint, len(members))
	for _, ep := range members {
		want[ep.Addr()] = ep
	}
	var added, joined []*target
	for a, ep := range want {
		tg := next[a]
		cfg := f.tmpl.target(ep.Backend()).withDefaults()
		switch {
		case tg == nil:
			tg = c.newTarget(cfg)
			tg.src = f
			tg.addOwner(f.pool)
			next[a] = tg
			added = append(added, tg)
		case !tg.hasOwner(f.pool):
			tg.addOwner(f.pool)
			if tg.src == nil || retemplate {
				tg.src = f
				tg.reconfigure(cfg)
			}
			joined = append(joined, tg)
		case retemplate:
			tg.src = f
			tg.reconfigure(cfg)
		}
	}
	for a, tg := range old {
		if _, keep := want[a]; keep || !tg.hasOwner(f.pool) {
			continue
		}
		tg.removeOwner(f.pool)
		if tg.src == f {
			tg.src = nil
		}
		if len(tg.owners()) == 0 && !tg.standalone {
			delete(next, a)
			c.removedLocked(tg)
		}
	}
	c.targets.Store(&next)
	for _, tg := range added {
		c.startLocked(tg)
	}
	for _, tg := range joined {
		tg.mu.Lock()
		tg.syncLocked()
		tg.mu.Unlock()
	}
	if retemplate {
		// A member the pool already has may be one whose target did not
		// change: apply its state all the same, so Follow leaves p right.
		for _, ep := range members {
			if tg := next[ep.Addr()]; tg != nil {
				tg.mu.Lock()
				tg.syncLocked()
				tg.mu.Unlock()
			}
		}
	}
}

func sameMembers(a, b []*balancer.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// owners returns the pools whose members t checks.
func (t *target) owners() []*balancer.Pool {
	if o := t.pools.Load(); o != nil {
		return *o
	}
	return nil
}

func (t *target) hasOwner(p *balancer.Pool) bool {
	for _, o := range t.owners() {
		if o == p {
			return true
		}
	}
	return false
}

// addOwner and removeOwner replace the owner list; Checker.mu must be held.
func (t *target) addOwner(p *balancer.Pool) {
	old := t.owners()
	next := append(old[:len(old):len(old)], p)
	t.pools.Store(&next)
}

func (t *target) removeOwner(p *balancer.Pool) {
	old := t.owners()
	next := make([]*balancer.Pool, 0, len(old))
	for _, o := range old {
		if o != p {
			next = append(next, o)
		}
	}
	t.pools.Store(&next)
}

// syncLocked applies t's state to every pool that has it as a member.
// t.mu must be held; pools never call into the checker while they hold
// their own lock, so taking it here cannot deadlock.
func (t *target) syncLocked() {
	if t.removed {
		return
	}
	h := balancer.Unhealthy
	switch {
	case t.servingLocked():
		h = balancer.Healthy
	case t.health == Unknown && t.agent != AgentDown && !t.ejected.Load():
		h = balancer.HealthUnknown
	}
	draining := t.state == Draining
	for _, p := range t.owners() {
		if t.weight != 0 {
			p.SetWeight(t.addr, t.weight)
		}
		p.SetHealth(t.addr, h)
		p.SetDraining(t.addr, draining)
	}
}

// ObserveDone implements [balancer.Observer]: it reports the outcome of
// work on ep to passive outlier detection, as [Checker.Observe] does, with
// a non-nil err counting as a failure. It never blocks and does not
// allocate.
func (c *Checker) ObserveDone(ep *balancer.Endpoint, err error, latency time.Duration) {
	c.Observe(ep.Addr(), Outcome{Failed: err != nil, Latency: latency, Err: err})
}

var _ balancer.Observer = (*Checker)(nil)

// poolNames returns the names of the pools t serves.
func (t *target) poolNames() []string {
	ps := t.owners()
	if len(ps) == 0 {
		return nil
	}
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name()
	}
	return names
}
