package health

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// target is the checker's record of one Target. The fields read by
// Observe are atomics; the rest are owned by the target's goroutine or
// guarded by mu (state) or Checker.mu (ejection record).
type target struct {
	c    *Checker
	addr netip.AddrPort

	// Hot path, read and written by Observe.
	ejected atomic.Bool
	consec  atomic.Int64
	window  []atomic.Uint64 // see passive.go for the bucket layout
	kick    chan struct{}   // cap 1: "look at the passive counters"

	reconf chan struct{} // cap 1: "the probe schedule changed"
	ctx    context.Context
	cancel context.CancelFunc

	// Ejection record, guarded by Checker.mu.
	ejections   int
	lastUneject time.Time

	// Owners, guarded by Checker.mu (pools read lock-free).
	pools      atomic.Pointer[[]*balancer.Pool] // the followed pools that have this member
	src        *follower                        // the follower whose template configured it
	standalone bool                             // set by SetTarget: kept without owners

	errMu      sync.Mutex
	passiveErr error // error of the last failed outcome reported

	mu          sync.Mutex
	cfg         Target
	health      State // from probes alone: Unknown, Healthy or Unhealthy
	succ, fail  int
	agent       AgentState
	agentW      uint32 // last weight word of the agent
	agentPct    bool   // agentW is a percentage of cfg.Weight
	agentHasW   bool   // the agent reported a weight
	agentWeight uint32 // weight asked for by the agent, ≥ 1; 0: none
	agentZero   bool   // the agent asked for weight 0: drain
	state       State  // published state
	weight      uint32 // published agent weight
	lastErr     error
	removed     bool
}

func (c *Checker) newTarget(cfg Target) *target {
	t := &target{
		c:      c,
		addr:   cfg.Addr,
		window: make([]atomic.Uint64, c.passive.buckets),
		kick:   make(chan struct{}, 1),
		reconf: make(chan struct{}, 1),
		cfg:    cfg,
		health: cfg.Initial,
	}
	if cfg.Probe == nil && t.health == Unknown {
		t.health = Healthy
	}
	t.ctx, t.cancel = context.WithCancel(c.ctx)
	return t
}

// reconfigure installs a new configuration, keeping state. Called with
// Checker.mu held.
func (t *target) reconfigure(cfg Target) {
	t.mu.Lock()
	old := t.cfg
	t.cfg = cfg
	if cfg.Probe == nil && t.health == Unknown {
		t.health = Healthy
	}
	t.weighLocked() // percentages scale the configured weight
	t.publishLocked(t.state, "reconfigured", nil, false)
	t.mu.Unlock()
	if old.Interval != cfg.Interval || old.DownInterval != cfg.DownInterval || old.FastInterval != cfg.FastInterval ||
		old.Jitter != cfg.Jitter || (old.Probe == nil) != (cfg.Probe == nil) {
		select {
		case t.reconf <- struct{}{}:
		default:
		}
	}
}

func (t *target) config() Target {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg
}

// effectiveLocked combines probe health, ejection and agent state into
// the state to publish. t.mu must be held.
func (t *target) effectiveLocked() State {
	switch {
	case t.agent == AgentDrain || t.agent == AgentMaint || t.agentZero:
		return Draining
	case t.agent == AgentDown:
		return Unhealthy
	case t.ejected.Load() && t.health != Unknown:
		return Unhealthy
	}
	return t.health
}

// servingLocked reports whether the target is fit for work, drain aside:
// what a pool's healthy flag should say. t.mu must be held.
func (t *target) servingLocked() bool {
	return t.health == Healthy && !t.ejected.Load() && t.agent != AgentDown
}

// publishLocked emits an event if the effective state or the agent weight
// changed since the last one (always if force). prev is unused unless
// force; t.mu must be held.
func (t *target) publishLocked(prev State, reason string, err error, force bool) {
	if t.removed {
		return
	}
	st := t.effectiveLocked()
	if !force {
		prev = t.state
	}
	if st == t.state && t.agentWeight == t.weight && !force {
		return
	}
	ev := Event{Target: t.addr, Pools: t.poolNames(), State: st, Prev: prev, Reason: reason, Err: err, Time: time.Now()}
	if t.agentWeight != t.weight || (force && t.agentWeight != 0) {
		ev.Weight = t.agentWeight
	}
	t.state, t.weight = st, t.agentWeight
	t.syncLocked()
	t.emitLocked(ev)
}

// emitLocked queues ev; t.mu must be held, so a target's events are
// queued in the order of its transitions.
func (t *target) emitLocked(ev Event) { t.c.emit(ev) }

// probeResult is the outcome of one probe, sent back to run.
type probeResult struct {
	rep Report
	err error
}

// run is the target's goroutine: it probes on schedule, ejects on kicks
// from Observe and ends ejections when they expire. Each probe runs on a
// goroutine of its own, so a slow probe delays neither ejections nor
// their expiry; one probe at most is in flight.
func (c *Checker) run(t *target) {
	defer c.wg.Done()
	cfg := t.config()
	probe := time.NewTimer(time.Hour)
	probe.Stop()
	var probeC <-chan time.Time
	if cfg.Probe != nil {
		// A target that waits for a verdict is probed at once, so a new
		// member serves within milliseconds; one given an initial state
		// spreads its first probe over the interval, so a large pool does
		// not probe in one burst.
		first := time.Duration(0)
		if t.initialState() != Unknown {
			first = time.Duration(c.rand() * float64(t.delay(&cfg)))
		}
		probe.Reset(first)
		probeC = probe.C
	}
	eject := time.NewTimer(time.Hour)
	eject.Stop()
	var ejectC <-chan time.Time
	defer probe.Stop()
	defer eject.Stop()
	results := make(chan probeResult, 1) // the probe goroutine never blocks
	probing := false
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.kick:
			if d := c.evalPassive(t); d > 0 {
				eject.Reset(d)
				ejectC = eject.C
			}
		case <-ejectC:
			ejectC = nil
			c.uneject(t, "ejection expired")
		case <-t.reconf:
			cfg = t.config()
			probe.Stop()
			probeC = nil
			if cfg.Probe != nil && !probing {
				probe.Reset(time.Duration(c.rand() * float64(t.delay(&cfg))))
				probeC = probe.C
			}
		case <-probeC:
			cfg = t.config()
			if cfg.Probe == nil {
				probeC = nil
				continue
			}
			probing = true
			c.wg.Add(1)
			go func(p Prober, timeout time.Duration) {
				defer c.wg.Done()
				ctx, cancel := context.WithTimeout(t.ctx, timeout)
				defer cancel()
				rep, err := p.Probe(ctx, t.addr)
				results <- probeResult{rep, err}
			}(cfg.Probe, cfg.Timeout)
		case r := <-results:
			probing = false
			if t.ctx.Err() != nil {
				return
			}
			c.handleProbe(t, r.rep, r.err)
			if r.err == nil && c.passive.probeUneject && t.ejected.Load() {
				eject.Stop()
				ejectC = nil
				c.uneject(t, "probe")
			}
			cfg = t.config()
			probeC = nil
			if cfg.Probe != nil {
				probe.Reset(c.jittered(t.delay(&cfg), &cfg))
				probeC = probe.C
			}
		}
	}
}

// initialState returns the probe state t has before any probe.
func (t *target) initialState() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.health
}

// delay returns the base delay before the next probe.
func (t *target) delay(cfg *Target) time.Duration {
	t.mu.Lock()
	health, succ, fail := t.health, t.succ, t.fail
	t.mu.Unlock()
	switch {
	case cfg.FastInterval > 0 && (health == Healthy && fail > 0 || health == Unhealthy && succ > 0):
		return cfg.FastInterval
	case health == Unhealthy:
		return cfg.DownInterval
	}
	return cfg.Interval
}

// handleProbe applies one probe result: rise/fall counting and agent
// words.
func (c *Checker) handleProbe(t *target, rep Report, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.removed {
		return
	}
	before := t.health
	if err != nil {
		t.lastErr = err
		t.fail++
		t.succ = 0
		if t.health == Unknown || (t.health != Unhealthy && t.fail >= t.cfg.Fall) {
			t.health = Unhealthy
		}
		c.log.Debug("health: probe failed", "target", t.addr, "err", err, "failures", t.fail)
	} else {
		t.lastErr = nil
		t.succ++
		t.fail = 0
		if t.health == Unknown || (t.health != Healthy && t.succ >= t.cfg.Rise) {
			t.health = Healthy
		}
	}
	t.applyAgentLocked(rep)
	reason := "agent"
	if t.health != before {
		reason = "probe"
	}
	t.publishLocked(0, reason, err, false)
}

// applyAgentLocked records the agent words of rep. t.mu must be held.
func (t *target) applyAgentLocked(rep Report) {
	if rep.Agent != AgentNone {
		// AgentUp ("up", "ready") replaces drain, maint and down.
		t.agent = rep.Agent
	}
	if rep.HasWeight {
		t.agentHasW, t.agentW, t.agentPct = true, rep.Weight, rep.WeightPercent
		t.weighLocked()
	}
}

// weighLocked computes the agent weight from the last weight word and
// the configured weight. t.mu must be held.
func (t *target) weighLocked() {
	if !t.agentHasW {
		return
	}
	w := uint64(t.agentW)
	if t.agentPct {
		w = uint64(t.cfg.Weight) * w / 100
		if w == 0 && t.agentW != 0 {
			w = 1
		}
	}
	w = min(w, 1<<32-1)
	if w == 0 {
		t.agentZero = true
	} else {
		t.agentZero = false
		t.agentWeight = uint32(w)
	}
}
