package health

import (
	"errors"
	"net/netip"
	"strconv"
	"time"
)

// State is the health state of a target.
type State uint8

// The states of a target. Unknown is the state before the first probe
// when a target is configured to wait for one.
const (
	Unknown State = iota
	Healthy
	Unhealthy
	Draining
)

// String returns the state's name in lower case.
func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	case Draining:
		return "draining"
	default:
		return "unknown"
	}
}

// MarshalText returns the state's name, so states read well in JSON and
// in log lines.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state's name as String prints it.
func (s *State) UnmarshalText(b []byte) error {
	for v := Unknown; v <= Draining; v++ {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return errors.New("health: unknown state " + strconv.Quote(string(b)))
}

// Outcome is what a front-end observed of one unit of work sent to a
// target, reported through an Observer. It is a small value so reporting
// it does not allocate.
type Outcome struct {
	// Failed reports a failure that says something about the target: a
	// refused or timed-out connection, a reset, a 5xx from the target
	// itself. Client errors (4xx, a client that went away) are not
	// failures.
	Failed bool
	// Latency is the time the target took (to the response header, for
	// HTTP), or zero if unknown.
	Latency time.Duration
	// Err is the failure, if there is one to tell; the ejection event it
	// leads to carries the last one.
	Err error
}

// Observer receives passive outcomes by address. *Checker implements it.
// Front-ends need not: they report through [balancer.Endpoint.Done], which
// reaches the checker that follows the pool (see [Checker.Follow]); this
// interface serves code that does its own work outside a pool. Observe
// must not block or allocate.
type Observer interface {
	Observe(target netip.AddrPort, o Outcome)
}

// Event reports a transition of one target. Events fire on transitions
// only: a change of state; a change of the weight an agent asked for
// (then State may equal Prev, and Weight is set); a target added (Reason
// "added", Prev Unknown, State its initial state) or removed (Reason
// "removed", State Unknown). See [Checker.Subscribe].
type Event struct {
	// Target is the address of the target that changed.
	Target netip.AddrPort
	// Pools names the followed pools that have the target as a member
	// (see [Checker.Follow]); nil for a target set with SetTarget alone.
	Pools []string
	// State is the new state; Prev the one before.
	State, Prev State
	// Weight is the weight the target asked for through an agent report
	// (see Report), or 0 if the event does not change the weight.
	Weight uint32
	// Reason says which rule caused the change: "probe", "passive:
	// consecutive failures", "passive: failure rate", "passive: latency",
	// "agent", "ejection expired", "added", "removed", "reconfigured" (a
	// new configured weight rescaled an agent percentage).
	Reason string
	// Err is the probe error, or the last failed outcome's error for a
	// passive ejection, behind the change, if any.
	Err error
	// Time is when the transition happened.
	Time time.Time
}
