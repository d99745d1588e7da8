package balancer

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a [Pool]. Only Builder is required; every other field
// has a useful zero value, documented on the field.
type Config struct {
	// Name names the pool in its log lines, in health events and in the
	// front-ends that serve from it. Empty means "default".
	Name string

	// Builder turns the ready set into a picker (round robin, Maglev, ...).
	// Required.
	Builder Builder

	// SlowStart is the window over which a backend's effective weight
	// ramps from SlowStartMinWeight to full after it joins a pool that is
	// already in service, or after it becomes healthy again. It applies to
	// every policy, hash-based ones included: the ready set is rebuilt at
	// each ramp step. Zero disables slow start.
	SlowStart time.Duration
	// SlowStartMinWeight is the fraction of its weight a backend starts at,
	// in (0, 1]. Zero means 0.1.
	SlowStartMinWeight float64
	// SlowStartSteps is how many times the weight grows during the window.
	// Zero means 10.
	SlowStartSteps int

	// PanicThreshold, in [0, 1], is the healthy fraction under which the
	// pool stops trusting health and picks from every member that is not
	// draining, as Envoy does: a pool whose health checks fail everywhere
	// at once more likely has a broken checker than no working backend.
	// Zero disables panic mode.
	PanicThreshold float64

	// LocalZone, when set, makes the pool prefer backends whose Zone
	// equals it while enough of them are ready (see LocalZoneMinReady);
	// otherwise it uses every zone.
	LocalZone string
	// LocalZoneMinReady is the fraction of the local zone's members that
	// must be ready for the pool to use the local zone alone. Zero means
	// 0.5.
	LocalZoneMinReady float64

	// EWMADecay is the time constant of each endpoint's latency EWMA. Zero
	// means DefaultEWMADecay.
	EWMADecay time.Duration

	// Logger receives membership and state changes at debug level, each
	// line with the attribute pool=Name. Nil means slog.Default().
	Logger *slog.Logger
}

// Snapshot is an immutable view of a pool's ready set and the picker built
// from it. Pickers embedded in data planes (a kernel map, DNS answers)
// read Ready; request paths call Pick.
type Snapshot struct {
	// Picker chooses from Ready. Never nil: an empty set gives a picker
	// that fails with ErrNoBackend.
	Picker Picker
	// Ready is the ready set in member order with effective weights. It
	// must not be modified.
	Ready []Weighted
	// Panic reports that the healthy fraction fell under the pool's
	// PanicThreshold and Ready holds every member that is not draining.
	Panic bool
	// Members is every member of the pool in configuration order, ready
	// or not. Every change to a member (membership, health, drain,
	// weight) publishes a new snapshot, even when the ready set stays the
	// same (the picker is then reused), so data planes that mirror all
	// members (counters, fallbacks) stay current. It must not be modified.
	Members []*Endpoint
	// Version increases by one with every snapshot a pool publishes.
	Version uint64

	changed chan struct{}
}

// Pick calls s.Picker.Pick(info).
func (s *Snapshot) Pick(info PickInfo) (*Endpoint, error) { return s.Picker.Pick(info) }

// Changed returns a channel closed when a newer snapshot replaces s.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// member is the pool's private record of one backend.
type member struct {
	ep         *Endpoint
	readySince time.Time // zero: not ramping (initial members)
	late       bool      // joined a pool in service: ramps when it first turns healthy
}

// Pool holds a set of backends and publishes an immutable [Snapshot] of
// those ready for work. Membership, health, drain and weight changes
// rebuild the picker under a mutex, only when the ready set or an
// effective weight changed, and publish the snapshot through an atomic
// pointer (a change that leaves the ready set alone publishes one with the
// old picker); picks read it without locking.
//
// All methods are safe for concurrent use. Pick never blocks and does not
// allocate; the mutating methods block only on the pool's own mutex and
// the builder.
type Pool struct {
	cfg      Config
	log      *slog.Logger
	snap     atomic.Pointer[Snapshot]
	observer atomic.Pointer[observerBox]

	mu        sync.Mutex
	members   []*member
	index     map[netip.AddrPort]*member
	populated bool   // the pool has been in service: later joins slow-start
	join      Health // health of members that join from now on
	rebuild   bool   // the next rebuildLocked builds a picker even for the same ready set
	timer     *time.Timer
	closed    bool
}

// ErrNoBuilder is returned by [New] when Config.Builder is nil.
var ErrNoBuilder = errors.New("balancer: Config.Builder is required")

// New returns an empty pool. Its snapshot picks nothing until backends are
// added.
func New(cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("pool", cfg.Name)
	p := &Pool{cfg: cfg, log: log, index: make(map[netip.AddrPort]*member), join: Healthy}
	p.snap.Store(&Snapshot{Picker: ErrPicker(ErrNoBackend), changed: make(chan struct{})})
	return p, nil
}

// withDefaults validates cfg and fills in the defaults of zero fields.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Builder == nil {
		return cfg, ErrNoBuilder
	}
	switch {
	case cfg.SlowStart < 0:
		return cfg, errors.New("balancer: SlowStart must not be negative")
	case cfg.SlowStartMinWeight < 0 || cfg.SlowStartMinWeight > 1:
		return cfg, errors.New("balancer: SlowStartMinWeight must be in (0, 1]")
	case cfg.SlowStartSteps < 0:
		return cfg, errors.New("balancer: SlowStartSteps must not be negative")
	case cfg.PanicThreshold < 0 || cfg.PanicThreshold > 1:
		return cfg, errors.New("balancer: PanicThreshold must be in [0, 1]")
	case cfg.LocalZoneMinReady < 0 || cfg.LocalZoneMinReady > 1:
		return cfg, errors.New("balancer: LocalZoneMinReady must be in [0, 1]")
	case cfg.EWMADecay < 0:
		return cfg, errors.New("balancer: EWMADecay must not be negative")
	}
	if cfg.SlowStartMinWeight == 0 {
		cfg.SlowStartMinWeight = 0.1
	}
	if cfg.SlowStartSteps == 0 {
		cfg.SlowStartSteps = 10
	}
	if cfg.LocalZoneMinReady == 0 {
		cfg.LocalZoneMinReady = 0.5
	}
	if cfg.EWMADecay == 0 {
		cfg.EWMADecay = DefaultEWMADecay
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	return cfg, nil
}

// Reconfigure replaces the pool's policy and settings (Builder, slow
// start, panic threshold, zone preference, EWMA decay of members that join
// later) while keeping its members and their state: health, drain,
// overrides, in-flight counts and latency estimates. The picker is rebuilt
// and a snapshot published at once. The name and the logger cannot change:
// cfg.Name must be empty or equal to the pool's. An invalid cfg is an
// error and changes nothing. A configuration reload uses it, so a pool
// whose policy changed keeps serving without a gap.
func (p *Pool) Reconfigure(cfg Config) error {
	if cfg.Name != "" && cfg.Name != p.cfg.Name {
		return errors.New("balancer: pool " + p.cfg.Name + ": Reconfigure cannot rename it to " + cfg.Name)
	}
	cfg.Name = p.cfg.Name
	cfg.Logger = p.cfg.Logger
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	// Build a picker from the new builder even when the ready set is the
	// same.
	p.rebuild = true
	p.rebuildLocked(time.Now(), true)
	return nil
}

// MustNew is like [New] but panics on error. It is meant for examples and
// tests with a constant Config.
func MustNew(cfg Config) *Pool {
	p, err := New(cfg)
	if err != nil {
		panic(err)
	}
	return p
}

// observerBox holds an Observer behind one pointer, so Done reads it with
// one atomic load.
type observerBox struct{ o Observer }

// Name returns the pool's name ("default" when Config.Name was empty).
func (p *Pool) Name() string { return p.cfg.Name }

// SetObserver makes o receive the outcome of every unit of work that ends
// on a member (see [Endpoint.Done]); nil removes it. A health checker that
// follows the pool installs itself here, so front-ends report outcomes
// once, through Done. It returns the observer it replaced.
func (p *Pool) SetObserver(o Observer) Observer {
	var box *observerBox
	if o != nil {
		box = &observerBox{o}
	}
	if old := p.observer.Swap(box); old != nil {
		return old.o
	}
	return nil
}

// Observer returns the pool's observer, or nil.
func (p *Pool) Observer() Observer {
	if b := p.observer.Load(); b != nil {
		return b.o
	}
	return nil
}

// SetJoinHealth sets the health of members that join the pool from now
// on: [Healthy] (the default, for a pool without a checker), or
// [HealthUnknown] for a pool whose checker must judge a member before it
// gets work. health.Checker.Follow sets it.
func (p *Pool) SetJoinHealth(h Health) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.join = h
}

// Pick chooses an endpoint from the current snapshot. It never blocks and
// does not allocate.
func (p *Pool) Pick(info PickInfo) (*Endpoint, error) {
	return p.snap.Load().Picker.Pick(info)
}

// Snapshot returns the current snapshot. Wait on its Changed channel to
// learn of the next one.
func (p *Pool) Snapshot() *Snapshot { return p.snap.Load() }

// Endpoint returns the member with address addr, or nil.
func (p *Pool) Endpoint(addr netip.AddrPort) *Endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.index[addr]; m != nil {
		return m.ep
	}
	return nil
}

// Endpoints returns every member in configuration order, ready or not.
func (p *Pool) Endpoints() []*Endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	eps := make([]*Endpoint, len(p.members))
	for i, m := range p.members {
		eps[i] = m.ep
	}
	return eps
}

// Len returns the number of members.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.members)
}

// Set replaces the membership with backends, in that order. Members whose
// address and zone are unchanged keep their Endpoint (counters, health,
// drain) and take the new weight and metadata; new ones start healthy
// and, if the pool was already in service, slow-start. Duplicate addresses
// are an error and change nothing.
func (p *Pool) Set(backends []Backend) error {
	seen := make(map[netip.AddrPort]struct{}, len(backends))
	for _, b := range backends {
		if !b.Addr.IsValid() {
			return errors.New("balancer: invalid backend address")
		}
		if _, dup := seen[b.Addr]; dup {
			return errors.New("balancer: duplicate backend " + b.Addr.String())
		}
		seen[b.Addr] = struct{}{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	members := make([]*member, 0, len(backends))
	index := make(map[netip.AddrPort]*member, len(backends))
	changed := len(backends) != len(p.members)
	for i, b := range backends {
		m := p.index[b.Addr]
		if m == nil || m.ep.Zone() != b.Zone {
			m = p.newMember(b, now)
		} else if p.updateLocked(m, b) {
			changed = true
		}
		changed = changed || p.members[i] != m
		members = append(members, m)
		index[b.Addr] = m
	}
	p.members, p.index = members, index
	p.rebuildLocked(now, changed)
	return nil
}

// Add adds b, or updates the weight and metadata of the member with b's
// address (a changed zone replaces the member).
func (p *Pool) Add(b Backend) error {
	if !b.Addr.IsValid() {
		return errors.New("balancer: invalid backend address")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	changed := true
	if m := p.index[b.Addr]; m != nil && m.ep.Zone() == b.Zone {
		changed = p.updateLocked(m, b)
	} else {
		nm := p.newMember(b, now)
		if m != nil {
			for i := range p.members {
				if p.members[i] == m {
					p.members[i] = nm
				}
			}
		} else {
			p.members = append(p.members, nm)
		}
		p.index[b.Addr] = nm
	}
	p.rebuildLocked(now, changed)
	return nil
}

// Remove removes the member with address addr and reports whether it was
// there. Work in flight on it is not interrupted; to let it finish first,
// drain it (see [Pool.SetDraining]) and wait for its InFlight to reach 0.
func (p *Pool) Remove(addr netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.index[addr]
	if m == nil {
		return false
	}
	delete(p.index, addr)
	for i := range p.members {
		if p.members[i] == m {
			p.members = append(p.members[:i:i], p.members[i+1:]...)
			break
		}
	}
	p.rebuildLocked(time.Now(), true)
	return true
}

// SetHealthy sets the health of the member with address addr to
// [Healthy] or [Unhealthy] and reports whether it changed. See
// [Pool.SetHealth].
func (p *Pool) SetHealthy(addr netip.AddrPort, healthy bool) bool {
	h := Unhealthy
	if healthy {
		h = Healthy
	}
	return p.SetHealth(addr, h)
}

// SetHealth sets the health of the member with address addr and reports
// whether it changed. A member that turns Healthy from Unhealthy
// slow-starts (it failed, so it may be cold); one that turns Healthy from
// HealthUnknown (its first verdict) gets its full weight at once, unless
// it joined after the pool was in service, when it ramps from that
// verdict.
func (p *Pool) SetHealth(addr netip.AddrPort, h Health) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.index[addr]
	if m == nil || m.ep.Health() == h {
		return false
	}
	prev := m.ep.Health()
	m.ep.unknown.Store(h == HealthUnknown)
	m.ep.healthy.Store(h == Healthy)
	now := time.Now()
	if h == Healthy && p.cfg.SlowStart > 0 && (prev == Unhealthy || m.late) {
		m.readySince = now
	}
	if h == Healthy {
		m.late = false
	}
	p.log.Debug("balancer: health changed", "backend", addr, "health", h, "prev", prev)
	p.rebuildLocked(now, true)
	return true
}

// SetDraining sets or clears drain on the member with address addr and
// reports whether it changed. A draining member gets no new work; work
// already in flight finishes. A member leaving drain slow-starts.
func (p *Pool) SetDraining(addr netip.AddrPort, draining bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.index[addr]
	if m == nil || m.ep.draining.Load() == draining {
		return false
	}
	m.ep.draining.Store(draining)
	now := time.Now()
	if !draining && p.cfg.SlowStart > 0 {
		m.readySince = now
	}
	p.log.Debug("balancer: drain changed", "backend", addr, "draining", draining)
	p.rebuildLocked(now, true)
	return true
}

// Override is an operator's decision about one member that stands above
// its configuration, its health checker and its agent: drained (no new
// work, work in flight finishes) or given a weight. The zero value is no
// override.
type Override struct {
	// Drain takes the member out of new picks.
	Drain bool
	// Weight, when not zero, replaces the member's weight.
	Weight uint32
}

// SetOverride sets the operator's override on the member with address
// addr (the zero Override clears it) and reports whether the member
// exists. The override outlives health and agent changes and
// [Pool.Set] calls that keep the member; it goes with the member.
func (p *Pool) SetOverride(addr netip.AddrPort, o Override) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.index[addr]
	if m == nil {
		return false
	}
	if m.ep.Override() == o {
		return true
	}
	wasDrained := m.ep.adminDrain.Load()
	m.ep.adminDrain.Store(o.Drain)
	m.ep.adminWeight.Store(o.Weight)
	now := time.Now()
	if wasDrained && !o.Drain && !m.ep.draining.Load() && p.cfg.SlowStart > 0 {
		m.readySince = now
	}
	p.log.Info("balancer: override changed", "backend", addr, "drain", o.Drain, "weight", o.Weight)
	p.rebuildLocked(now, true)
	return true
}

// SetWeight sets the configured weight of the member with address addr
// (zero means 1) and reports whether it changed.
func (p *Pool) SetWeight(addr netip.AddrPort, weight uint32) bool {
	if weight == 0 {
		weight = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.index[addr]
	if m == nil || m.ep.weight.Load() == weight {
		return false
	}
	m.ep.weight.Store(weight)
	p.rebuildLocked(time.Now(), true)
	return true
}

// Close stops the pool's slow-start timer. The pool keeps serving picks;
// later changes apply at once, without ramping.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	return nil
}

func (p *Pool) newMember(b Backend, now time.Time) *member {
	ep := NewEndpoint(b)
	ep.decay = float64(p.cfg.EWMADecay)
	in := *ep.info.Load()
	in.pool = p
	ep.info.Store(&in)
	if p.join != Healthy {
		ep.healthy.Store(false)
		ep.unknown.Store(p.join == HealthUnknown)
	}
	m := &member{ep: ep}
	if p.populated && p.cfg.SlowStart > 0 {
		m.readySince = now
		m.late = true
	}
	return m
}

// updateLocked applies b's weight and metadata to m and reports whether
// either changed. p.mu must be held.
func (p *Pool) updateLocked(m *member, b Backend) bool {
	changed := m.ep.weight.Swap(b.weight()) != b.weight()
	if in := m.ep.info.Load(); !maps.Equal(in.meta, b.Meta) && (len(in.meta) > 0 || len(b.Meta) > 0) {
		m.ep.info.Store(&endpointInfo{zone: in.zone, meta: cloneMeta(b.Meta), pool: in.pool})
		changed = true
	}
	return changed
}

// rampFactor returns the fraction of its weight m gets at now, and when
// that fraction next grows (zero if it no longer will).
func (p *Pool) rampFactor(m *member, now time.Time) (float64, time.Time) {
	window := p.cfg.SlowStart
	if window <= 0 || p.closed || m.readySince.IsZero() {
		return 1, time.Time{}
	}
	elapsed := now.Sub(m.readySince)
	if elapsed >= window {
		m.readySince = time.Time{}
		return 1, time.Time{}
	}
	steps := p.cfg.SlowStartSteps
	step := window / time.Duration(steps)
	if step <= 0 {
		step = 1
	}
	k := int(elapsed / step)
	lo := p.cfg.SlowStartMinWeight
	f := lo + (1-lo)*float64(k)/float64(steps)
	return f, m.readySince.Add(time.Duration(k+1) * step)
}

// rebuildLocked computes the ready set and publishes a new snapshot if it
// differs from the current one, or if changed reports a change to a
// member (membership, health, drain, weight) that the ready set may not
// show; the picker is rebuilt only when the ready set changed. p.mu must
// be held.
func (p *Pool) rebuildLocked(now time.Time, changed bool) {
	if len(p.members) > 0 {
		p.populated = true
	}
	var healthy, serving int
	for _, m := range p.members {
		if m.ep.Draining() {
			continue
		}
		serving++
		if m.ep.healthy.Load() {
			healthy++
		}
	}
	panicking := p.cfg.PanicThreshold > 0 && serving > 0 &&
		float64(healthy) < p.cfg.PanicThreshold*float64(serving)

	useLocal := false
	if z := p.cfg.LocalZone; z != "" && !panicking {
		var local, localReady int
		for _, m := range p.members {
			if m.ep.Zone() != z || m.ep.Draining() {
				continue
			}
			local++
			if m.ep.healthy.Load() {
				localReady++
			}
		}
		useLocal = localReady > 0 && float64(localReady) >= p.cfg.LocalZoneMinReady*float64(local)
	}

	var next time.Time
	ready := make([]Weighted, 0, len(p.members))
	for _, m := range p.members {
		ep := m.ep
		if ep.Draining() || (!panicking && !ep.healthy.Load()) {
			continue
		}
		if useLocal && ep.Zone() != p.cfg.LocalZone {
			continue
		}
		f, at := p.rampFactor(m, now)
		if !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
		ready = append(ready, Weighted{Endpoint: ep, Weight: float64(ep.Weight()) * f})
	}

	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if !next.IsZero() {
		p.timer = time.AfterFunc(next.Sub(now), p.tick)
	}

	old := p.snap.Load()
	sameSet := old.Panic == panicking && sameReady(old.Ready, ready) && !p.rebuild
	p.rebuild = false
	if sameSet && !changed {
		return
	}
	s := &Snapshot{Ready: ready, Panic: panicking, Version: old.Version + 1, changed: make(chan struct{})}
	s.Members = make([]*Endpoint, len(p.members))
	for i, m := range p.members {
		s.Members[i] = m.ep
	}
	switch {
	case sameSet:
		s.Ready, s.Picker = old.Ready, old.Picker
	case len(ready) == 0:
		s.Ready = nil
		s.Picker = ErrPicker(ErrNoBackend)
	default:
		s.Picker = p.cfg.Builder.Build(ready)
	}
	if panicking != old.Panic {
		p.log.Warn("balancer: panic mode changed", "panic", panicking, "healthy", healthy, "serving", serving)
	}
	p.snap.Store(s)
	close(old.changed)
}

func (p *Pool) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.rebuildLocked(time.Now(), false)
}

func sameReady(a, b []Weighted) bool {
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
