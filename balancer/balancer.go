package balancer

import (
	"errors"
	"net/netip"
	"time"
)

// ErrNoBackend is returned by a [Picker] when no backend can take work:
// the pool is empty, or every member is unhealthy or draining.
var ErrNoBackend = errors.New("balancer: no healthy backend")

// Backend describes one member of a pool as configured by the user. Addr
// is its identity within a [Pool].
type Backend struct {
	// Addr is the backend's address and port. It identifies the backend.
	Addr netip.AddrPort
	// Weight is the backend's relative share of new work. Zero means 1.
	Weight uint32
	// Zone names the failure domain or location of the backend (a rack,
	// an availability zone, a city). Empty means no zone.
	Zone string
	// Meta is data about the member that a front-end needs and the pool
	// does not: a redirect target's base URL, a DNS name, a MAC address.
	// The front-end that reads a key documents it (redirect.MetaURL,
	// l2lb.MetaMAC, ...), so a fact about a member is declared once, on
	// the member. The pool keeps a copy; nil means none.
	Meta map[string]string
}

// Health is a member's health as a pool sees it.
type Health uint8

// The health of a member. A member joins a pool Healthy, so a pool works
// without a health checker; a checker that follows the pool marks the
// members it has not judged yet HealthUnknown.
const (
	// HealthUnknown: not checked yet. The member is not ready; when it
	// turns Healthy it gets its full weight at once (it has not failed),
	// unless it joined a pool already in service.
	HealthUnknown Health = iota
	// Healthy: fit for work.
	Healthy
	// Unhealthy: failed its checks. It slow-starts when it turns Healthy.
	Unhealthy
)

// String returns "unknown", "healthy" or "unhealthy".
func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// MarshalText returns h's name.
func (h Health) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText parses a name as String prints it.
func (h *Health) UnmarshalText(b []byte) error {
	for v := HealthUnknown; v <= Unhealthy; v++ {
		if v.String() == string(b) {
			*h = v
			return nil
		}
	}
	return errors.New("balancer: unknown health " + string(b))
}

// Observer receives the outcome of every unit of work that ends on a
// pool's members (see [Endpoint.Done] and [Pool.SetObserver]), for
// passive health checking. health.Checker implements it. ObserveDone is
// called on the front-end's goroutine: it must not block, and should not
// allocate.
type Observer interface {
	ObserveDone(ep *Endpoint, err error, latency time.Duration)
}

// weight returns b.Weight with the zero value mapped to 1.
func (b Backend) weight() uint32 {
	if b.Weight == 0 {
		return 1
	}
	return b.Weight
}

// PickInfo carries what a [Picker] may use to choose an endpoint.
// The zero value means "no affinity": the policy chooses freely.
type PickInfo struct {
	// Key is a 64-bit affinity hash: of the client address, the flow's
	// 5-tuple, a cookie or the request URI. See [HashString], [HashAddr]
	// and [HashFlow]. Hash-based policies send equal keys to the same
	// endpoint while the ready set is unchanged.
	Key uint64
	// HasKey reports whether Key is set. Hash-based policies pick at
	// random when it is false.
	HasKey bool
}

// WithKey returns a PickInfo carrying the affinity key k.
func WithKey(k uint64) PickInfo { return PickInfo{Key: k, HasKey: true} }

// Picker chooses an endpoint for one unit of work (a request, a
// connection, a DNS answer, a flow).
//
// A Picker is an immutable snapshot of a pool's ready set: it is safe for
// concurrent use, never blocks and does not allocate. It returns
// [ErrNoBackend] (possibly wrapped) when it has nothing to offer.
type Picker interface {
	Pick(info PickInfo) (*Endpoint, error)
}

// Weighted is one entry of a ready set: an endpoint and its effective
// weight at the time the set was built. The effective weight is the
// configured weight scaled down during slow start; it is always > 0.
type Weighted struct {
	Endpoint *Endpoint
	Weight   float64
}

// Builder turns a ready set into a [Picker]. A pool calls Build whenever
// the ready set or an effective weight changes.
//
// ready is never empty and must not be modified or retained beyond the
// returned picker's needs (copy what you keep). Build may allocate and may
// take time; Pick may not. Build must be safe to call from several pools at
// once.
type Builder interface {
	Build(ready []Weighted) Picker
}

// BuilderFunc adapts a function to the [Builder] interface.
type BuilderFunc func(ready []Weighted) Picker

// Build calls f(ready).
func (f BuilderFunc) Build(ready []Weighted) Picker { return f(ready) }

// ErrPicker returns a [Picker] whose Pick always fails with err. Pools use
// it for an empty ready set, so a snapshot is never nil.
func ErrPicker(err error) Picker { return errPicker{err} }

type errPicker struct{ err error }

func (p errPicker) Pick(PickInfo) (*Endpoint, error) { return nil, p.err }

// PickerFunc adapts a function to the [Picker] interface. The function
// must honour the Picker contract: safe for concurrent use, non-blocking,
// allocation-free.
type PickerFunc func(info PickInfo) (*Endpoint, error)

// Pick calls f(info).
func (f PickerFunc) Pick(info PickInfo) (*Endpoint, error) { return f(info) }
