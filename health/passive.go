package health

import (
	"errors"
	"net/netip"
	"time"
)

// PassiveConfig configures outlier detection from the outcomes front-ends
// report through [Checker.Observe], after Envoy's outlier detection. The
// zero value enables ejection after 5 consecutive failures with Envoy's
// default ejection times and a 10% cap; the rate rules are off until
// their thresholds are set.
//
// Outcomes are counted in a sliding window of Buckets buckets spanning
// Window. Each bucket counts at most 65535 outcomes; later ones in the
// same bucket are not counted, so a saturated bucket holds a sample of
// its first 65535 outcomes. Observe does not read the clock (a clock
// read costs more than the rest of Observe on virtual machines): when a
// window rule is on, a checker goroutine advances the current bucket
// eight times per bucket span, so bucket edges are late by at most an
// eighth of a bucket.
type PassiveConfig struct {
	// Disabled turns passive outlier detection off: Observe does nothing.
	Disabled bool

	// ConsecutiveFailures ejects a target after this many failed outcomes
	// in a row. Zero means 5; negative disables the rule.
	ConsecutiveFailures int

	// FailureRate, in (0, 1], ejects a target whose failed fraction of
	// the outcomes in the window reaches it, once the window holds at
	// least MinRequests outcomes. Zero disables the rule.
	FailureRate float64
	// Window is the span of the sliding window. Zero means 10 s.
	Window time.Duration
	// Buckets is how many buckets the window has; it slides one bucket
	// (Window / Buckets) at a time. Zero means 10.
	Buckets int
	// MinRequests is the least number of outcomes in the window for the
	// rate rules to apply. Zero means 20.
	MinRequests int

	// LatencyThreshold makes outcomes with a Latency at or above it count
	// as slow. A target is ejected when the window holds at least
	// LatencyMinSlow slow outcomes that are at least LatencyRate of the
	// outcomes in it (and MinRequests outcomes in all). Zero disables the
	// rule.
	LatencyThreshold time.Duration
	// LatencyMinSlow is the least number of slow outcomes in the window
	// that can eject. Zero means 10.
	LatencyMinSlow int
	// LatencyRate, in (0, 1], is the slow fraction of the window's
	// outcomes that ejects. Zero means 0.5.
	LatencyRate float64

	// BaseEjection is how long the first ejection of a target lasts; the
	// n-th lasts n × BaseEjection, capped at MaxEjection. The count n
	// drops by one for each BaseEjection the target spends not ejected,
	// so a target that behaves is forgiven (Envoy does the same). Zero
	// means 30 s.
	BaseEjection time.Duration
	// MaxEjection caps the length of an ejection. Zero means 300 s; it is
	// raised to BaseEjection if lower.
	MaxEjection time.Duration

	// MaxEjectedPercent, in [0, 100], is the largest share of the targets
	// that may be ejected at once, evaluated when an ejection is due: an
	// outlier over the cap stays in service. One target may always be
	// ejected, as in Envoy. A target that probes or its agent already
	// hold out of service is not ejected, so it does not use up the
	// share. Zero means 10.
	MaxEjectedPercent float64

	// HoldEjection keeps an ejected target out for its whole ejection
	// time even when its active probes pass. By default (false) a passing
	// probe ends the ejection, as Envoy's
	// successful_active_health_check_uneject_host does by default: the
	// probe is the more direct evidence. Set it when the health endpoint
	// cannot see what passive detection catches (a backend whose /healthz
	// answers while its real requests fail).
	HoldEjection bool
}

// passiveParams is a validated PassiveConfig with defaults applied.
type passiveParams struct {
	disabled     bool
	consecutive  int64 // 0: rule off
	rate         float64
	bucketNanos  int64
	buckets      int
	minRequests  uint64
	latency      time.Duration // 0: rule off
	minSlow      uint64
	slowRate     float64
	windowed     bool // a window rule is on
	base, maxEj  time.Duration
	maxEjectPct  float64
	probeUneject bool
}

func (p PassiveConfig) params() (passiveParams, error) {
	switch {
	case p.FailureRate < 0 || p.FailureRate > 1:
		return passiveParams{}, errors.New("health: Passive.FailureRate must be in [0, 1]")
	case p.LatencyRate < 0 || p.LatencyRate > 1:
		return passiveParams{}, errors.New("health: Passive.LatencyRate must be in [0, 1]")
	case p.MaxEjectedPercent < 0 || p.MaxEjectedPercent > 100:
		return passiveParams{}, errors.New("health: Passive.MaxEjectedPercent must be in [0, 100]")
	case p.Window < 0, p.LatencyThreshold < 0, p.BaseEjection < 0, p.MaxEjection < 0:
		return passiveParams{}, errors.New("health: Passive durations must not be negative")
	case p.Buckets < 0, p.MinRequests < 0, p.LatencyMinSlow < 0:
		return passiveParams{}, errors.New("health: Passive counts must not be negative")
	}
	q := passiveParams{
		disabled:     p.Disabled,
		consecutive:  int64(p.ConsecutiveFailures),
		rate:         p.FailureRate,
		buckets:      p.Buckets,
		minRequests:  uint64(p.MinRequests),
		latency:      p.LatencyThreshold,
		minSlow:      uint64(p.LatencyMinSlow),
		slowRate:     p.LatencyRate,
		base:         p.BaseEjection,
		maxEj:        p.MaxEjection,
		maxEjectPct:  p.MaxEjectedPercent,
		probeUneject: !p.HoldEjection,
	}
	if q.consecutive == 0 {
		q.consecutive = 5
	} else if q.consecutive < 0 {
		q.consecutive = 0
	}
	window := p.Window
	if window == 0 {
		window = 10 * time.Second
	}
	if q.buckets == 0 {
		q.buckets = 10
	}
	if q.buckets > 1<<15 {
		return passiveParams{}, errors.New("health: Passive.Buckets must be at most 32768")
	}
	q.bucketNanos = max(1, int64(window)/int64(q.buckets))
	if q.minRequests == 0 {
		q.minRequests = 20
	}
	if q.minSlow == 0 {
		q.minSlow = 10
	}
	if q.slowRate == 0 {
		q.slowRate = 0.5
	}
	if q.base == 0 {
		q.base = 30 * time.Second
	}
	if q.maxEj == 0 {
		q.maxEj = 300 * time.Second
	}
	q.maxEj = max(q.maxEj, q.base)
	if q.maxEjectPct == 0 {
		q.maxEjectPct = 10
	}
	q.windowed = q.rate > 0 || q.latency > 0
	return q, nil
}

// A window bucket is one uint64 updated by compare-and-swap:
//
//	bits 63..48  epoch (bucket number since the Unix epoch, mod 2^16)
//	bits 47..32  outcomes
//	bits 31..16  failed outcomes
//	bits 15..0   slow outcomes
//
// A bucket whose epoch is not the current one is stale and is reset by
// the first outcome of its new epoch. Counts saturate at 65535 outcomes.
const (
	bucketTotal  = 1 << 32
	bucketFailed = 1 << 16
	bucketSlow   = 1
	bucketMask   = 0xffff
)

// Observe reports the outcome of one unit of work sent to the target with
// address addr, for passive outlier detection. Addresses that are not
// targets are ignored (register passive-only targets with a nil Probe);
// so are outcomes for a target already ejected.
//
// Observe is safe for concurrent use, never blocks, never allocates and
// starts no goroutine: it updates per-target atomics found through an
// atomic pointer, and when a rule may have tripped it wakes the target's
// goroutine, which decides on the ejection.
func (c *Checker) Observe(addr netip.AddrPort, o Outcome) {
	p := &c.passive
	if p.disabled {
		return
	}
	t := (*c.targets.Load())[addr]
	if t == nil || t.ejected.Load() {
		return
	}
	if o.Failed {
		if o.Err != nil {
			t.errMu.Lock()
			t.passiveErr = o.Err
			t.errMu.Unlock()
		}
		if n := t.consec.Add(1); p.consecutive > 0 && n >= p.consecutive {
			t.wake()
		}
	} else if t.consec.Load() != 0 {
		t.consec.Store(0)
	}
	if !p.windowed {
		return
	}
	slow := p.latency > 0 && o.Latency >= p.latency
	epoch := c.epoch.Load()
	t.record(epoch, o.Failed, slow)
	if o.Failed && p.rate > 0 || slow {
		if c.windowReason(t, epoch) != "" {
			t.wake()
		}
	}
}

var _ Observer = (*Checker)(nil)

func (t *target) wake() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// record counts one outcome in the bucket of epoch.
func (t *target) record(epoch uint64, failed, slow bool) {
	b := &t.window[epoch%uint64(len(t.window))]
	e := epoch & bucketMask
	for {
		old := b.Load()
		cur := old
		if cur>>48 != e {
			cur = e << 48
		}
		if (cur>>32)&bucketMask == bucketMask {
			return // saturated
		}
		next := cur + bucketTotal
		if failed {
			next += bucketFailed
		}
		if slow {
			next += bucketSlow
		}
		if b.CompareAndSwap(old, next) {
			return
		}
	}
}

// sum adds up the buckets of the window ending at epoch.
func (t *target) sum(epoch uint64) (total, failed, slow uint64) {
	n := uint64(len(t.window))
	e := epoch & bucketMask
	for i := range t.window {
		w := t.window[i].Load()
		if (e-w>>48)&bucketMask >= n {
			continue // stale
		}
		total += (w >> 32) & bucketMask
		failed += (w >> 16) & bucketMask
		slow += w & bucketMask
	}
	return total, failed, slow
}

func (t *target) resetPassive() {
	t.consec.Store(0)
	for i := range t.window {
		t.window[i].Store(0)
	}
}

// windowReason returns the window rule t breaks at epoch, or "".
func (c *Checker) windowReason(t *target, epoch uint64) string {
	p := &c.passive
	total, failed, slow := t.sum(epoch)
	if total < p.minRequests || total == 0 {
		return ""
	}
	if p.rate > 0 && float64(failed) >= p.rate*float64(total) {
		return "passive: failure rate"
	}
	if p.latency > 0 && slow >= p.minSlow && float64(slow) >= p.slowRate*float64(total) {
		return "passive: latency"
	}
	return ""
}

// evalPassive runs on t's goroutine after a wake from Observe: it checks
// the rules again and ejects t if one is broken and the cap allows. It
// returns the ejection's length, or 0.
func (c *Checker) evalPassive(t *target) time.Duration {
	p := &c.passive
	if t.ejected.Load() {
		return 0
	}
	now := time.Now()
	reason := ""
	if p.consecutive > 0 && t.consec.Load() >= p.consecutive {
		reason = "passive: consecutive failures"
	} else if p.windowed {
		reason = c.windowReason(t, c.epoch.Load())
	}
	if reason == "" {
		return 0
	}
	t.mu.Lock()
	serving := t.servingLocked()
	t.mu.Unlock()
	if !serving {
		// Probes or its agent already keep it out of service: ejecting it
		// would only spend the MaxEjectedPercent budget that an outlier
		// still in service may need.
		t.resetPassive()
		return 0
	}
	c.mu.Lock()
	targets := len(*c.targets.Load())
	allowed := max(1, int(float64(targets)*p.maxEjectPct/100))
	if c.closed || (*c.targets.Load())[t.addr] != t {
		c.mu.Unlock()
		return 0
	}
	if c.ejected >= allowed {
		c.mu.Unlock()
		// Start counting afresh so a target held in service by the cap
		// does not wake its goroutine on every later failure; it is
		// tried again when it breaks a rule again.
		t.resetPassive()
		c.log.Debug("health: ejection refused: too many targets ejected", "target", t.addr, "reason", reason, "ejected", allowed)
		return 0
	}
	c.ejected++
	if t.ejections > 0 {
		forgiven := int(now.Sub(t.lastUneject) / p.base)
		t.ejections = max(0, t.ejections-forgiven)
	}
	t.ejections++
	d := min(p.base*time.Duration(t.ejections), p.maxEj)
	t.ejected.Store(true)
	n := t.ejections
	c.mu.Unlock()

	c.log.Debug("health: ejecting", "target", t.addr, "reason", reason, "for", d, "ejections", n)
	t.errMu.Lock()
	err := t.passiveErr
	t.errMu.Unlock()
	t.mu.Lock()
	t.publishLocked(0, reason, err, false)
	t.mu.Unlock()
	return d
}

// uneject ends t's ejection, if it is ejected, with the given reason.
func (c *Checker) uneject(t *target, reason string) {
	c.mu.Lock()
	if !t.ejected.Load() {
		c.mu.Unlock()
		return
	}
	t.resetPassive()
	t.ejected.Store(false)
	if (*c.targets.Load())[t.addr] == t {
		c.ejected--
	}
	t.lastUneject = time.Now()
	c.mu.Unlock()
	t.mu.Lock()
	t.publishLocked(0, reason, nil, false)
	t.mu.Unlock()
}

// clock advances c.epoch, the current window bucket number, for Observe.
// It runs only when a window rule is on.
func (c *Checker) clock() {
	defer c.wg.Done()
	bucket := c.passive.bucketNanos
	tick := time.NewTicker(time.Duration(max(bucket/8, int64(time.Millisecond))))
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-tick.C:
			c.epoch.Store(uint64(now.UnixNano() / bucket))
		}
	}
}
