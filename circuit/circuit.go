package circuit

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
)

// ErrOpen is wrapped by every error a breaker returns when a threshold
// refuses work.
var ErrOpen = errors.New("circuit: breaker open")

// The errors a threshold refuses work with; each wraps [ErrOpen].
var (
	ErrMaxConnections       = fmt.Errorf("%w: max connections", ErrOpen)
	ErrMaxPendingRequests   = fmt.Errorf("%w: max pending requests", ErrOpen)
	ErrMaxRequests          = fmt.Errorf("%w: max requests", ErrOpen)
	ErrMaxRetries           = fmt.Errorf("%w: max retries", ErrOpen)
	ErrRetryBudgetExhausted = fmt.Errorf("%w: retry budget exhausted", ErrOpen)
)

// ErrConfig is wrapped by the errors of invalid thresholds.
var ErrConfig = errors.New("circuit: invalid thresholds")

// DefaultMinRetryConcurrency is RetryBudget.MinConcurrency when it is zero
// (Envoy's default for min_retry_concurrency).
const DefaultMinRetryConcurrency = 3

// Kind names one of the four gauges a breaker limits.
type Kind uint8

// The gauges of a breaker, after Envoy's thresholds.
const (
	// Connections: connections open to the upstream.
	Connections Kind = iota
	// PendingRequests: requests waiting for a connection.
	PendingRequests
	// Requests: requests (attempts, retries included) in flight.
	Requests
	// Retries: retry attempts in flight.
	Retries

	numKinds
)

var kindNames = [numKinds]string{"connections", "pending_requests", "requests", "retries"}

// String returns the gauge's name as Envoy's thresholds name it, without
// the "max_": "connections", "pending_requests", "requests", "retries".
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText returns the kind's name, as String prints it.
func (k Kind) MarshalText() ([]byte, error) {
	if k >= numKinds {
		return nil, fmt.Errorf("circuit: unknown kind %d", uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// RetryBudget limits concurrent retries to a share of the work in flight,
// as Envoy's retry_budget. The zero value is no budget.
type RetryBudget struct {
	// Percent, in [0, 100], is the share of active and pending requests
	// that may be retries at once (Envoy's budget_percent; 20 is Envoy's
	// default once a budget is configured). Zero disables the budget.
	Percent float64
	// MinConcurrency is the number of concurrent retries the budget
	// always allows, however little work is in flight (Envoy's
	// min_retry_concurrency). Zero means DefaultMinRetryConcurrency.
	MinConcurrency int
}

// Thresholds are Envoy's circuit-breaker thresholds for one breaker.
// Zero means no limit for each, so the zero value limits nothing (Envoy's
// defaults are 1024 connections, pending and active requests, and 3
// retries; set them to get its behaviour).
type Thresholds struct {
	// MaxConnections limits the connections open at once.
	MaxConnections int
	// MaxPendingRequests limits the requests waiting for a connection.
	MaxPendingRequests int
	// MaxRequests limits the requests in flight, retries included.
	MaxRequests int
	// MaxRetries limits the retries in flight. It is ignored when
	// RetryBudget is set, as in Envoy.
	MaxRetries int
	// RetryBudget, when its Percent is set, limits retries in flight to
	// a share of the requests in flight instead of MaxRetries.
	RetryBudget RetryBudget
}

// Validate reports whether t is usable: no negative limit, a budget
// percentage within [0, 100].
func (t Thresholds) Validate() error {
	switch {
	case t.MaxConnections < 0 || t.MaxPendingRequests < 0 || t.MaxRequests < 0 || t.MaxRetries < 0 || t.RetryBudget.MinConcurrency < 0:
		return fmt.Errorf("%w: negative limit", ErrConfig)
	case !(t.RetryBudget.Percent >= 0 && t.RetryBudget.Percent <= 100):
		return fmt.Errorf("%w: retry budget percent %v is not within [0, 100]", ErrConfig, t.RetryBudget.Percent)
	}
	return nil
}

// Stats is a breaker's gauges and overflow counters at one moment.
type Stats struct {
	// Active is the current value of each gauge, indexed by Kind.
	Active [numKinds]int64
	// Overflow counts the work each threshold refused, indexed by Kind
	// (Envoy's upstream_cx_overflow, upstream_rq_pending_overflow,
	// upstream_rq_overflow... and upstream_rq_retry_overflow, which the
	// retry budget counts too).
	Overflow [numKinds]uint64
}

// Breaker enforces one set of Thresholds. Work is admitted with
// [Breaker.Acquire] and must be given back with [Breaker.Release] when it
// ends. The zero value limits nothing and is ready to use.
type Breaker struct {
	thr      atomic.Pointer[Thresholds]
	active   [numKinds]atomic.Int64
	overflow [numKinds]atomic.Uint64
}

// NewBreaker returns a breaker enforcing t.
func NewBreaker(t Thresholds) (*Breaker, error) {
	b := new(Breaker)
	if err := b.SetThresholds(t); err != nil {
		return nil, err
	}
	return b, nil
}

// SetThresholds replaces the breaker's thresholds; work in flight is kept
// and counts against the new ones.
func (b *Breaker) SetThresholds(t Thresholds) error {
	if err := t.Validate(); err != nil {
		return err
	}
	b.thr.Store(&t)
	return nil
}

// Thresholds returns the breaker's thresholds.
func (b *Breaker) Thresholds() Thresholds {
	if t := b.thr.Load(); t != nil {
		return *t
	}
	return Thresholds{}
}

// Acquire admits one unit of k (a connection, a pending request, a
// request or a retry) if its threshold allows, or counts an overflow and
// returns the threshold's error (which wraps [ErrOpen]). Every nil return
// must be matched by one [Breaker.Release] of the same kind.
func (b *Breaker) Acquire(k Kind) error {
	limit := b.limit(k)
	g := &b.active[k]
	for {
		n := g.Load()
		if limit >= 0 && float64(n) >= limit {
			b.overflow[k].Add(1)
			return b.err(k)
		}
		if g.CompareAndSwap(n, n+1) {
			return nil
		}
	}
}

// Release gives back one unit of k admitted by [Breaker.Acquire].
func (b *Breaker) Release(k Kind) { b.active[k].Add(-1) }

// Active returns the current value of gauge k.
func (b *Breaker) Active(k Kind) int64 { return b.active[k].Load() }

// Overflows returns how many units of k the breaker has refused.
func (b *Breaker) Overflows(k Kind) uint64 { return b.overflow[k].Load() }

// Stats returns the breaker's gauges and overflow counters.
func (b *Breaker) Stats() Stats {
	var s Stats
	for k := range numKinds {
		s.Active[k] = b.active[k].Load()
		s.Overflow[k] = b.overflow[k].Load()
	}
	return s
}

// RetryLimit returns the number of retries the breaker allows in flight
// right now: the retry budget's share of active and pending requests (at
// least its MinConcurrency), MaxRetries without a budget, or +Inf.
func (b *Breaker) RetryLimit() float64 { return b.limit(Retries) }

// limit returns the threshold of k now, or -1 for none.
func (b *Breaker) limit(k Kind) float64 {
	t := b.thr.Load()
	if t == nil {
		return -1
	}
	var n int
	switch k {
	case Connections:
		n = t.MaxConnections
	case PendingRequests:
		n = t.MaxPendingRequests
	case Requests:
		n = t.MaxRequests
	case Retries:
		if rb := t.RetryBudget; rb.Percent > 0 {
			lim := rb.Percent / 100 * float64(b.active[Requests].Load()+b.active[PendingRequests].Load())
			minC := rb.MinConcurrency
			if minC == 0 {
				minC = DefaultMinRetryConcurrency
			}
			return math.Max(lim, float64(minC))
		}
		n = t.MaxRetries
	}
	if n == 0 {
		return -1
	}
	return float64(n)
}

func (b *Breaker) err(k Kind) error {
	switch k {
	case Connections:
		return ErrMaxConnections
	case PendingRequests:
		return ErrMaxPendingRequests
	case Requests:
		return ErrMaxRequests
	}
	if t := b.thr.Load(); t != nil && t.RetryBudget.Percent > 0 {
		return ErrRetryBudgetExhausted
	}
	return ErrMaxRetries
}
