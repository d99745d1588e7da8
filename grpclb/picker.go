package grpclb

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	lb "github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/circuit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// member is a READY member's connection and circuit breaker.
type member struct {
	sc  balancer.SubConn
	brk *circuit.Breaker
}

// picker picks with the pool's current snapshot, so slow-start steps and
// health changes made by the pool apply without a new gRPC picker; the
// map of READY SubConns is rebuilt (with the picker) when a SubConn
// changes state.
type picker struct {
	pool  *lb.Pool
	cg    *circuit.Group
	key   lb.Key
	ready map[*lb.Endpoint]member
}

func (b *lbBalancer) newPicker(ready map[*lb.Endpoint]member) *picker {
	return &picker{pool: b.pool, cg: b.cg, key: b.cfg.key, ready: ready}
}

// Pick picks a READY member with the lbkit policy, admits the RPC through
// the circuit breakers (a retry attempt, known through the interceptors,
// also through the retry budget), and reports its outcome in Done: the
// latency to the end of the RPC, and a failure when the status code is one
// a backend is to blame for (see Failure).
func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	rpc, _ := info.Ctx.Value(rpcKey{}).(*rpcState)
	pi := p.pickInfo(info)
	ep, err := p.pool.Pick(pi)
	if err != nil {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	if rpc != nil && rpc.attempts.Load() > 0 {
		// A retry: try for another backend than the last attempt's.
		last := rpc.last.Load()
		for i := 0; i < 2 && ep == last; i++ {
			if pi.HasKey {
				pi.Key = lb.Mix64(pi.Key + 1)
			}
			if ep, err = p.pool.Pick(pi); err != nil {
				return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
			}
		}
	}
	m, ok := p.ready[ep]
	if !ok {
		// The pool's snapshot is ahead of this picker: a new one is
		// on its way.
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	retry := false
	if rpc != nil {
		retry = rpc.attempts.Load() > 0
		if retry && rpc.waiting.CompareAndSwap(true, false) {
			p.cg.Pool().Release(circuit.PendingRequests)
		}
	}
	if retry {
		if err := p.cg.Acquire(m.brk, circuit.Retries); err != nil {
			return balancer.PickResult{}, overflow(err)
		}
	}
	if err := p.cg.Acquire(m.brk, circuit.Requests); err != nil {
		if retry {
			p.cg.Release(m.brk, circuit.Retries)
		}
		return balancer.PickResult{}, overflow(err)
	}
	if rpc != nil {
		rpc.attempts.Add(1)
		rpc.last.Store(ep)
	}
	ep.Start()
	start := time.Now()
	return balancer.PickResult{SubConn: m.sc, Done: func(di balancer.DoneInfo) {
		// time.Since reads only the monotonic clock; start plus the
		// latency is the end time DoneAt needs, without a second
		// wall-clock read.
		lat := time.Since(start)
		ep.DoneAt(Failure(di.Err), lat, start.Add(lat))
		p.cg.Release(m.brk, circuit.Requests)
		if retry {
			p.cg.Release(m.brk, circuit.Retries)
		}
		if rpc == nil {
			return
		}
		if di.Err == nil && !di.BytesSent && !di.BytesReceived {
			// gRPC dropped the pick (the SubConn was no longer
			// ready) and picks again for the same attempt.
			rpc.attempts.Add(-1)
			return
		}
		if di.Err != nil && p.cg.Pool().Acquire(circuit.PendingRequests) == nil {
			// The RPC may be retried: until its next attempt or its
			// end it is a pending request, in the retry budget's base.
			rpc.pool.Store(p.cg)
			if !rpc.waiting.CompareAndSwap(false, true) {
				p.cg.Pool().Release(circuit.PendingRequests)
			}
		}
	}}, nil
}

// pickInfo derives the pick key of an RPC.
func (p *picker) pickInfo(info balancer.PickInfo) lb.PickInfo {
	if info.Ctx != nil {
		if k, ok := info.Ctx.Value(keyCtx{}).(lb.PickInfo); ok {
			return k
		}
	}
	switch p.key.Source {
	case lb.KeyHeader:
		if info.Ctx != nil {
			if vs := metadata.ValueFromOutgoingContext(info.Ctx, p.key.Name); len(vs) > 0 {
				return lb.WithKey(lb.HashString(vs[0]))
			}
		}
	case lb.KeyPath:
		return lb.WithKey(lb.HashString(info.FullMethodName))
	}
	return lb.PickInfo{}
}

// Failure returns the outcome an RPC that ended with err reports to its
// backend: err for the codes a backend is to blame for (UNAVAILABLE,
// INTERNAL, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED, as Envoy's gRPC outlier
// detection maps them to 5xx), nil for success and for the caller's errors
// (CANCELED, INVALID_ARGUMENT, NOT_FOUND...).
func Failure(err error) error {
	if err == nil {
		return nil
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.DeadlineExceeded:
		return err
	}
	return nil
}

// overflowError is a circuit breaker's refusal as a gRPC status:
// UNAVAILABLE (as Envoy answers an overflow with 503), with errors.Is
// finding the breaker's error.
type overflowError struct{ err error }

func overflow(err error) error { return overflowError{err} }

func (e overflowError) Error() string { return "grpclb: " + e.err.Error() }
func (e overflowError) Unwrap() error { return e.err }

// GRPCStatus makes gRPC fail the RPC with UNAVAILABLE at once.
func (e overflowError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}

// Overflow returns the circuit breaker's error (circuit.ErrMaxRequests,
// circuit.ErrRetryBudgetExhausted..., each wrapping circuit.ErrOpen) that
// refused an RPC which failed with err, or nil if a breaker did not refuse
// it. gRPC hands the caller the status, not the picker's error value, so
// Overflow recognises the status's message.
func Overflow(err error) error {
	var oe overflowError
	if errors.As(err, &oe) {
		return oe.err
	}
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return nil
	}
	for _, e := range []error{circuit.ErrRetryBudgetExhausted, circuit.ErrMaxRetries, circuit.ErrMaxRequests, circuit.ErrMaxPendingRequests, circuit.ErrMaxConnections} {
		if s.Message() == "grpclb: "+e.Error() {
			return e
		}
	}
	return nil
}

type keyCtx struct{}

// WithKey returns a context whose RPCs pick with key (hashed as
// balancer.HashString) instead of the configured key.
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyCtx{}, lb.WithKey(lb.HashString(key)))
}

// rpcState follows one RPC across its attempts.
type rpcState struct {
	attempts atomic.Int32
	waiting  atomic.Bool // counted as a pending request between attempts
	last     atomic.Pointer[lb.Endpoint]
	pool     atomic.Pointer[circuit.Group]
}

type rpcKey struct{}

// end releases what the RPC still holds once it is over.
func (s *rpcState) end() {
	if s.waiting.CompareAndSwap(true, false) {
		if g := s.pool.Load(); g != nil {
			g.Release(nil, circuit.PendingRequests)
		}
	}
}

// RetryPolicy makes UnaryClientInterceptor retry idempotent unary RPCs
// itself. gRPC's own retryPolicy (service config) retries an attempt only
// when the server answered without a response or never saw the request
// (gRFC A6), because gRPC cannot know whether a method may run twice; an
// RPC in flight on a backend that dies fails. A method the caller declares
// idempotent can be retried after that too, on another backend. The zero
// value does not retry.
type RetryPolicy struct {
	// MaxAttempts is how many attempts an RPC gets, the first included.
	// Zero or one: no retries by the interceptor.
	MaxAttempts int
	// Codes are the status codes worth retrying. Empty means
	// UNAVAILABLE (a connection lost, a backend going away).
	Codes []codes.Code
	// Idempotent reports whether a method (its full name,
	// "/pkg.Service/Method") may run twice. Nil means every unary method.
	Idempotent func(fullMethod string) bool
	// Backoff is the jittered wait before each retry; a retry whose wait
	// would pass the RPC's deadline is not made.
	Backoff circuit.Backoff
}

func (rp *RetryPolicy) retryable(method string, err error) bool {
	if rp.MaxAttempts < 2 || (rp.Idempotent != nil && !rp.Idempotent(method)) {
		return false
	}
	if Overflow(err) != nil {
		return false // a breaker said no: retrying would defeat it
	}
	code := status.Code(err)
	if len(rp.Codes) == 0 {
		return code == codes.Unavailable
	}
	for _, c := range rp.Codes {
		if c == code {
			return true
		}
	}
	return false
}

// UnaryClientInterceptor lets the balancer tell an RPC's retries from its
// first attempt, so the retry budget and the max-retries threshold apply
// to them, and counts an RPC waiting for its next attempt as a pending
// request (the budget's base, with the requests in flight). The retries
// are gRPC's (retryPolicy in the service config), the interceptor's own
// (rp), or both. Install it with grpc.WithChainUnaryInterceptor; without it
// every attempt is admitted as a first attempt.
func UnaryClientInterceptor(rp RetryPolicy) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		s := new(rpcState)
		defer s.end()
		ctx = context.WithValue(ctx, rpcKey{}, s)
		for n := 1; ; n++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err == nil || n >= rp.MaxAttempts || ctx.Err() != nil || !rp.retryable(method, err) {
				return err
			}
			d, fits := rp.Backoff.Next(ctx, n)
			if !fits || circuit.Sleep(ctx, d) != nil {
				return err
			}
		}
	}
}
