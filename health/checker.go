package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Defaults for the fields of [Target] left zero.
const (
	DefaultInterval = 5 * time.Second
	DefaultTimeout  = 2 * time.Second
	DefaultRise     = 2
	DefaultFall     = 3
)

// ErrClosed is returned by [Checker.SetTarget] and [Checker.SetTargets]
// after [Checker.Close].
var ErrClosed = errors.New("health: checker closed")

// Config configures a [Checker]. The zero value is ready to use: passive
// outlier detection with Envoy-like defaults, logs to slog.Default() and
// jitter from math/rand/v2.
type Config struct {
	// Logger receives state transitions at info level and probe failures
	// at debug level. Nil means slog.Default().
	Logger *slog.Logger

	// Passive configures outlier detection from the outcomes reported
	// through [Checker.Observe]. The zero value enables it with the
	// defaults documented on [PassiveConfig].
	Passive PassiveConfig

	// Rand returns a pseudo-random number in [0, 1). It spreads first
	// probes over the interval and jitters each later delay. It is called
	// from the checker's goroutines, possibly concurrently, so it must be
	// safe for concurrent use. Nil means math/rand/v2.Float64. Tests
	// inject a fixed sequence here.
	Rand func() float64
}

// Target is one backend the checker watches, identified by Addr. Every
// field but Addr has a useful zero value, documented on the field.
type Target struct {
	// Addr is the address probes connect to and that front-ends report
	// outcomes for. Required.
	Addr netip.AddrPort

	// Probe is the active check. Nil means passive only: the target is
	// judged by the outcomes front-ends report and by nothing else, and
	// an Initial state of Unknown counts as Healthy.
	Probe Prober

	// Interval is the time between probes while the target is not down,
	// from the end of one probe to the start of the next. Zero means
	// DefaultInterval (5 s).
	Interval time.Duration
	// Timeout bounds each probe through its context. Zero means
	// DefaultTimeout (2 s), even when Interval is shorter: one probe at
	// most is in flight per target and the next is scheduled after it
	// ends, so a long timeout only delays the next probe, while a timeout
	// as short as a tiny interval would fail healthy targets on a busy
	// machine.
	Timeout time.Duration
	// Jitter is the most by which each delay between probes is shortened
	// or lengthened at random, so that many targets do not fire in
	// lockstep. It is capped at half the delay. Zero means a tenth of the
	// delay; negative disables jitter. The first probe of a target whose
	// Initial state is Unknown fires at once (it cannot serve before);
	// otherwise it, and the next probe after a schedule change, fire
	// after a random fraction of the delay.
	Jitter time.Duration
	// DownInterval is the time between probes while the target is
	// unhealthy (HAProxy's downinter), usually shorter than Interval so a
	// recovered target returns quickly. Zero means Interval.
	DownInterval time.Duration
	// FastInterval is the time between probes while the target is
	// changing state: healthy with failed probes counted toward Fall, or
	// unhealthy with passed probes counted toward Rise (HAProxy's
	// fastinter), so a verdict comes sooner. Zero means the interval of
	// the current state.
	FastInterval time.Duration

	// Rise is how many consecutive successful probes turn an unhealthy
	// target healthy. Zero means DefaultRise (2).
	Rise int
	// Fall is how many consecutive failed probes turn a healthy target
	// unhealthy. Zero means DefaultFall (3).
	Fall int

	// Initial is the state before the probes have spoken. Unknown (the
	// zero value) waits for the first probe, whose result decides at
	// once; Healthy assumes the target healthy until Fall probes fail;
	// Unhealthy needs Rise successes first. Draining is not allowed. The
	// first probe runs as soon as the target is added, so an Unknown
	// member of a followed pool is out of its ready set only until that
	// probe answers.
	Initial State

	// Weight is the configured weight of the target, the base that agent
	// percentages ("50%") scale. Zero means 1, so set it when agents
	// report percentages.
	Weight uint32
}

// withDefaults returns t with zero fields replaced by their defaults.
func (t Target) withDefaults() Target {
	if t.Interval == 0 {
		t.Interval = DefaultInterval
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTimeout
	}
	if t.DownInterval == 0 {
		t.DownInterval = t.Interval
	}
	if t.Rise == 0 {
		t.Rise = DefaultRise
	}
	if t.Fall == 0 {
		t.Fall = DefaultFall
	}
	if t.Weight == 0 {
		t.Weight = 1
	}
	return t
}

func (t Target) validate() error {
	switch {
	case !t.Addr.IsValid():
		return errors.New("health: target address is invalid")
	case t.Interval < 0, t.Timeout < 0, t.DownInterval < 0, t.FastInterval < 0:
		return fmt.Errorf("health: target %s: intervals and timeout must not be negative", t.Addr)
	case t.Rise < 0, t.Fall < 0:
		return fmt.Errorf("health: target %s: Rise and Fall must not be negative", t.Addr)
	case t.Initial == Draining || t.Initial > Draining:
		return fmt.Errorf("health: target %s: Initial must be Unknown, Healthy or Unhealthy", t.Addr)
	}
	return nil
}

// Checker watches a set of targets with active probes, passive outcomes
// and agent reports, and publishes their state (see the package
// documentation). Create one with [New]; the zero value is not usable.
//
// All methods are safe for concurrent use. Each target has its own
// goroutine that probes it and handles its ejections; one more goroutine
// delivers events, and one advances the passive window's clock when a
// window rule is on. [Checker.Close] stops them all.
type Checker struct {
	log     *slog.Logger
	rand    func() float64
	passive passiveParams
	epoch   atomic.Uint64 // current window bucket number; see clock

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	targets atomic.Pointer[map[netip.AddrPort]*target] // immutable; replaced under mu

	mu        sync.Mutex // guards writes to targets, followers, ejected, closed, each target's owners and ejection record
	followers map[*balancer.Pool]*follower
	ejected   int // targets ejected right now
	closed    bool

	subMu sync.Mutex
	subs  atomic.Pointer[[]*subscriber] // immutable; replaced under subMu

	qmu   sync.Mutex
	queue []Event
	qwake chan struct{}
}

// New returns a checker with no targets. It starts the goroutine that
// delivers events; call [Checker.Close] to stop it.
func New(cfg Config) (*Checker, error) {
	p, err := cfg.Passive.params()
	if err != nil {
		return nil, err
	}
	c := &Checker{
		log:       cfg.Logger,
		rand:      cfg.Rand,
		passive:   p,
		qwake:     make(chan struct{}, 1),
		followers: make(map[*balancer.Pool]*follower),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.rand == nil {
		c.rand = rand.Float64
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	empty := map[netip.AddrPort]*target{}
	c.targets.Store(&empty)
	c.subs.Store(new([]*subscriber))
	c.wg.Add(1)
	go c.dispatch()
	if p.windowed && !p.disabled {
		c.epoch.Store(uint64(time.Now().UnixNano() / p.bucketNanos))
		c.wg.Add(1)
		go c.clock()
	}
	return c, nil
}

// SetTarget adds t, or replaces the configuration of the target with the
// same address. A replaced target keeps its state, counters and ejection
// history; a new probe interval takes effect at once. A new target
// publishes an [Event] with Reason "added" and its initial state. It
// returns an error if t is invalid or the checker is closed.
//
// SetTarget is for addresses outside any pool (monitoring a dependency,
// a backend of a system lbkit does not balance): members of a pool are
// checked through [Checker.Follow], which needs no per-member call. A
// target set here for a member of a followed pool replaces that member's
// template configuration and is kept after the member leaves the pool.
func (c *Checker) SetTarget(t Target) error {
	if err := t.validate(); err != nil {
		return err
	}
	t = t.withDefaults()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	old := *c.targets.Load()
	if tg := old[t.Addr]; tg != nil {
		tg.standalone = true
		tg.reconfigure(t)
		return nil
	}
	next := make(map[netip.AddrPort]*target, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	tg := c.newTarget(t)
	tg.standalone = true
	next[t.Addr] = tg
	c.targets.Store(&next)
	c.startLocked(tg)
	return nil
}

// SetTargets makes ts the whole set of targets set through
// [Checker.SetTarget] in one step, as a configuration reload does: such
// targets not in ts are removed (unless a followed pool has them), the
// others are added or replaced as by SetTarget. It rebuilds the lookup
// table once, where a SetTarget per target rebuilds it each time. It
// returns an error, and changes nothing, if a target is invalid, two
// share an address or the checker is closed.
func (c *Checker) SetTargets(ts []Target) error {
	cfgs := make([]Target, len(ts))
	seen := make(map[netip.AddrPort]struct{}, len(ts))
	for i, t := range ts {
		if err := t.validate(); err != nil {
			return err
		}
		if _, dup := seen[t.Addr]; dup {
			return fmt.Errorf("health: duplicate target %s", t.Addr)
		}
		seen[t.Addr] = struct{}{}
		cfgs[i] = t.withDefaults()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	old := *c.targets.Load()
	next := make(map[netip.AddrPort]*target, len(cfgs))
	var added []*target
	for _, t := range cfgs {
		if tg := old[t.Addr]; tg != nil {
			tg.standalone = true
			tg.reconfigure(t)
			next[t.Addr] = tg
			continue
		}
		tg := c.newTarget(t)
		tg.standalone = true
		next[t.Addr] = tg
		added = append(added, tg)
	}
	for a, tg := range old {
		if _, keep := next[a]; keep {
			continue
		}
		if len(tg.owners()) > 0 {
			tg.standalone = false
			next[a] = tg
			continue
		}
		c.removedLocked(tg)
	}
	c.targets.Store(&next)
	for _, tg := range added {
		c.startLocked(tg)
	}
	return nil
}

// startLocked announces a new target and starts its goroutine. c.mu must
// be held and tg already in the lookup table.
func (c *Checker) startLocked(tg *target) {
	tg.mu.Lock()
	tg.publishLocked(Unknown, "added", nil, true)
	tg.mu.Unlock()
	c.wg.Add(1)
	go c.run(tg)
}

// RemoveTarget stops watching the target with address addr and reports
// whether it was there. A probe in flight is cancelled. It publishes an
// [Event] with Reason "removed" and State Unknown. A target that a
// followed pool has stays, for that pool.
func (c *Checker) RemoveTarget(addr netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.targets.Load()
	tg := old[addr]
	if tg == nil {
		return false
	}
	if len(tg.owners()) > 0 {
		tg.standalone = false
		return true
	}
	next := make(map[netip.AddrPort]*target, len(old))
	for k, v := range old {
		if k != addr {
			next[k] = v
		}
	}
	c.targets.Store(&next)
	c.removedLocked(tg)
	return true
}

// removedLocked stops a target already taken out of the lookup table.
// c.mu must be held.
func (c *Checker) removedLocked(tg *target) {
	if tg.ejected.Load() {
		c.ejected--
	}
	tg.cancel()
	tg.mu.Lock()
	tg.removed = true
	tg.emitLocked(Event{Target: tg.addr, Pools: tg.poolNames(), State: Unknown, Prev: tg.state, Reason: "removed", Time: time.Now()})
	tg.mu.Unlock()
}

// Targets returns the addresses of all targets, sorted.
func (c *Checker) Targets() []netip.AddrPort {
	m := *c.targets.Load()
	addrs := make([]netip.AddrPort, 0, len(m))
	for a := range m {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	return addrs
}

// State returns the current state of the target with address addr, or
// Unknown if there is no such target. It does not block on probes.
func (c *Checker) State(addr netip.AddrPort) State {
	st, _ := c.Status(addr)
	return st.State
}

// Status is a detailed view of one target, returned by [Checker.Status].
type Status struct {
	// State is the published state, as in events.
	State State
	// Probe is the state the active probes alone give (Healthy for a
	// passive-only target).
	Probe State
	// Ejected reports that passive outlier detection ejected the target.
	Ejected bool
	// Ejections is the ejection count that sets the length of the next
	// ejection, after decay (see [PassiveConfig.BaseEjection]).
	Ejections int
	// Agent is the last state an agent reported, AgentNone if none.
	Agent AgentState
	// Weight is the weight agent reports asked for, or 0 if none did.
	Weight uint32
	// LastErr is the error of the last failed probe, nil after a success.
	LastErr error
}

// Status returns a detailed view of the target with address addr and
// whether there is such a target. It does not block on probes.
func (c *Checker) Status(addr netip.AddrPort) (Status, bool) {
	tg := (*c.targets.Load())[addr]
	if tg == nil {
		return Status{}, false
	}
	c.mu.Lock()
	n := tg.ejections
	if n > 0 && !tg.ejected.Load() {
		n = max(0, n-int(time.Since(tg.lastUneject)/c.passive.base))
	}
	c.mu.Unlock()
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return Status{
		State:     tg.state,
		Probe:     tg.health,
		Ejected:   tg.ejected.Load(),
		Ejections: n,
		Agent:     tg.agent,
		Weight:    tg.weight,
		LastErr:   tg.lastErr,
	}, true
}

// Close stops every goroutine the checker started, cancels probes in
// flight and waits for them. Events not yet delivered are dropped. Later
// calls do nothing and return nil. Close must not be called from an event
// callback, which runs on a goroutine Close waits for.
func (c *Checker) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, tg := range *c.targets.Load() {
		tg.cancel()
	}
	var pools []*balancer.Pool
	for p, f := range c.followers {
		close(f.done)
		pools = append(pools, p)
	}
	clear(c.followers)
	c.mu.Unlock()
	for _, p := range pools {
		if p.Observer() == balancer.Observer(c) {
			p.SetObserver(nil)
		}
		p.SetJoinHealth(balancer.Healthy)
	}
	c.cancel()
	c.wg.Wait()
	return nil
}

// jittered returns base shortened or lengthened by at most the target's
// jitter, at random.
func (c *Checker) jittered(base time.Duration, cfg *Target) time.Duration {
	j := cfg.Jitter
	if j == 0 {
		j = base / 10
	}
	j = max(0, min(j, base/2))
	return base + time.Duration((2*c.rand()-1)*float64(j))
}
