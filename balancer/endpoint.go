package balancer

import (
	"math"
	"net/netip"
	"sync/atomic"
	"time"
)

// DefaultEWMADecay is the time constant of an endpoint's latency EWMA when
// the pool's Config leaves it zero (Finagle's default).
const DefaultEWMADecay = 10 * time.Second

// Endpoint is the live state of one pool member: its identity, in-flight
// work, latency estimate, health and weight. There is one Endpoint per
// member, shared by every picker snapshot, so counters survive rebuilds.
//
// All methods are safe for concurrent use and do not allocate.
type Endpoint struct {
	// Written by every unit of work and read by load-aware picks: one
	// cache line, so a pick reads one line per candidate and Start/Done
	// write one.
	inflight atomic.Int64
	requests atomic.Uint64
	failures atomic.Uint64
	ewma     atomic.Uint64 // math.Float64bits of the peak-EWMA latency in ns
	stamp    atomic.Int64  // time of the last EWMA update, Unix ns
	decay    float64       // EWMA time constant in nanoseconds, set once
	_        [16]byte

	// Read-mostly. With these the struct is 128 bytes, a size class whose
	// objects are 128-byte aligned, so the line above is one cache line.
	addr     netip.AddrPort
	info     atomic.Pointer[endpointInfo] // never nil
	weight   atomic.Uint32                // configured weight, ≥ 1
	healthy  atomic.Bool
	draining atomic.Bool
	unknown  atomic.Bool // not yet checked: not ready, and no slow start when it turns healthy

	// An operator's override (see Pool.SetOverride), above health and
	// configuration.
	adminWeight atomic.Uint32 // 0: none
	adminDrain  atomic.Bool
}

// endpointInfo is the part of a member's configuration that is replaced
// as a whole: its zone and its metadata.
type endpointInfo struct {
	zone string
	meta map[string]string
	pool *Pool // owner, nil for a standalone endpoint; never changes
}

// NewEndpoint returns a standalone endpoint for b, healthy and not
// draining. Pools create their own; NewEndpoint serves tests and code that
// builds pickers without a [Pool].
func NewEndpoint(b Backend) *Endpoint {
	e := &Endpoint{addr: b.Addr, decay: float64(DefaultEWMADecay)}
	e.info.Store(&endpointInfo{zone: b.Zone, meta: cloneMeta(b.Meta)})
	e.weight.Store(b.weight())
	e.healthy.Store(true)
	return e
}

// cloneMeta copies m, so a caller changing its map later changes nothing
// here. Empty maps become nil.
func cloneMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Addr returns the endpoint's address.
func (e *Endpoint) Addr() netip.AddrPort { return e.addr }

// Zone returns the endpoint's zone.
func (e *Endpoint) Zone() string { return e.info.Load().zone }

// Meta returns the value of the member's metadata key (see
// [Backend.Meta]), or "" if it has none. It does not allocate.
func (e *Endpoint) Meta(key string) string { return e.info.Load().meta[key] }

// MetaMap returns the member's metadata. The map must not be modified; a
// later [Pool.Set] replaces it rather than changing it, so it may be kept.
func (e *Endpoint) MetaMap() map[string]string { return e.info.Load().meta }

// Pool returns the pool the endpoint is a member of, or nil for an
// endpoint made with [NewEndpoint].
func (e *Endpoint) Pool() *Pool { return e.info.Load().pool }

// Backend returns the endpoint's current configuration.
func (e *Endpoint) Backend() Backend {
	in := e.info.Load()
	return Backend{Addr: e.addr, Weight: e.weight.Load(), Zone: in.zone, Meta: in.meta}
}

// Weight returns the member's weight (≥ 1): an operator's override if
// there is one (see [Pool.SetOverride]), else the configured weight or the
// one its health agent asked for. The effective weight during slow start
// is in the pool's [Snapshot].
func (e *Endpoint) Weight() uint32 {
	if w := e.adminWeight.Load(); w != 0 {
		return w
	}
	return e.weight.Load()
}

// Override returns the operator's override on the member (see
// [Pool.SetOverride]); the zero value means none.
func (e *Endpoint) Override() Override {
	return Override{Drain: e.adminDrain.Load(), Weight: e.adminWeight.Load()}
}

// Healthy reports whether the endpoint is currently considered healthy.
func (e *Endpoint) Healthy() bool { return e.healthy.Load() }

// Health returns the endpoint's health: [HealthUnknown] until a health
// checker has spoken for a member it checks, then [Healthy] or
// [Unhealthy]. Endpoints no checker follows are Healthy.
func (e *Endpoint) Health() Health {
	switch {
	case e.healthy.Load():
		return Healthy
	case e.unknown.Load():
		return HealthUnknown
	}
	return Unhealthy
}

// Draining reports whether the endpoint is draining: it takes no new work
// while its in-flight work finishes.
func (e *Endpoint) Draining() bool { return e.draining.Load() || e.adminDrain.Load() }

// InFlight returns the number of units of work started and not yet done.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// Requests returns the number of units of work started on this endpoint.
func (e *Endpoint) Requests() uint64 { return e.requests.Load() }

// Failures returns the number of units of work that ended with an error.
func (e *Endpoint) Failures() uint64 { return e.failures.Load() }

// Start records that a unit of work was sent to the endpoint. Every Start
// must be followed by exactly one [Endpoint.Done].
func (e *Endpoint) Start() {
	e.inflight.Add(1)
	e.requests.Add(1)
}

// Done records the end of a unit of work begun with [Endpoint.Start]: it
// decrements the in-flight count, counts a failure when err is non-nil,
// feeds latency (when > 0) into the peak-EWMA estimate and reports the
// outcome to the pool's [Observer] (passive health checking), if it has
// one. It reads the clock when latency > 0; a caller that already has the
// time should call [Endpoint.DoneAt].
//
// err is the outcome as the front-end judges it: nil for success; a
// connection error, a timeout or a 5xx the backend itself sent for a
// failure. Work that failed through no fault of the backend (the client
// went away, a 4xx) should be reported with a nil err.
func (e *Endpoint) Done(err error, latency time.Duration) {
	var now time.Time
	if latency > 0 {
		now = time.Now()
	}
	e.DoneAt(err, latency, now)
}

// DoneAt is [Endpoint.Done] with the time the work ended, so a front-end
// that measured latency with its own clock reading does not pay for
// another (a clock read costs up to ~150 ns on some VMs).
func (e *Endpoint) DoneAt(err error, latency time.Duration, now time.Time) {
	e.inflight.Add(-1)
	if err != nil {
		e.failures.Add(1)
	}
	if latency > 0 {
		e.ObserveLatency(now, latency)
	}
	if p := e.info.Load().pool; p != nil {
		if o := p.observer.Load(); o != nil {
			o.o.ObserveDone(e, err, latency)
		}
	}
}

// ObserveLatency feeds one latency sample taken at now into the endpoint's
// peak-EWMA: a sample above the current estimate replaces it at once
// (peak), a lower one is blended in with weight 1-exp(-Δt/τ), where Δt is
// the time since the previous sample and τ the pool's EWMA decay.
func (e *Endpoint) ObserveLatency(now time.Time, latency time.Duration) {
	t := now.UnixNano()
	rtt := float64(latency)
	for {
		oldBits := e.ewma.Load()
		old := math.Float64frombits(oldBits)
		var next float64
		if old == 0 || rtt > old {
			next = rtt
		} else {
			dt := float64(t - e.stamp.Load())
			if dt < 0 {
				dt = 0
			}
			w := math.Exp(-dt / e.decay)
			next = old*w + rtt*(1-w)
		}
		if e.ewma.CompareAndSwap(oldBits, math.Float64bits(next)) {
			e.stamp.Store(t)
			return
		}
	}
}

// LatencyEWMA returns the peak-EWMA latency estimate in nanoseconds as of
// the last sample, and the time of that sample in Unix nanoseconds. Both are
// zero before the first sample. Policies may decay the value further
// towards zero for the time since the sample (see the ewma package).
func (e *Endpoint) LatencyEWMA() (ns float64, stampUnixNano int64) {
	return math.Float64frombits(e.ewma.Load()), e.stamp.Load()
}

// EWMADecay returns the EWMA time constant the endpoint uses.
func (e *Endpoint) EWMADecay() time.Duration { return time.Duration(e.decay) }
