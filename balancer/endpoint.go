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
	zone     string
	weight   atomic.Uint32 // configured weight, ≥ 1
	healthy  atomic.Bool
	draining atomic.Bool
}

// NewEndpoint returns a standalone endpoint for b, healthy and not
// draining. Pools create their own; NewEndpoint serves tests and code that
// builds pickers without a [Pool].
func NewEndpoint(b Backend) *Endpoint {
	e := &Endpoint{addr: b.Addr, zone: b.Zone, decay: float64(DefaultEWMADecay)}
	e.weight.Store(b.weight())
	e.healthy.Store(true)
	return e
}

// Addr returns the endpoint's address.
func (e *Endpoint) Addr() netip.AddrPort { return e.addr }

// Zone returns the endpoint's zone.
func (e *Endpoint) Zone() string { return e.zone }

// Backend returns the endpoint's current configuration.
func (e *Endpoint) Backend() Backend {
	return Backend{Addr: e.addr, Weight: e.weight.Load(), Zone: e.zone}
}

// Weight returns the configured weight (≥ 1). The effective weight during
// slow start is in the pool's [Snapshot].
func (e *Endpoint) Weight() uint32 { return e.weight.Load() }

// Healthy reports whether the endpoint is currently considered healthy.
func (e *Endpoint) Healthy() bool { return e.healthy.Load() }

// Draining reports whether the endpoint is draining: it takes no new work
// while its in-flight work finishes.
func (e *Endpoint) Draining() bool { return e.draining.Load() }

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
// decrements the in-flight count, counts a failure when err is non-nil and
// feeds latency (when > 0) into the peak-EWMA estimate. It reads the clock
// when latency > 0; a caller that already has the time should call
// [Endpoint.DoneAt].
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
