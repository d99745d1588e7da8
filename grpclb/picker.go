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
	ep, err := p.pool.Pick(p.pickInfo(info))
	if err != nil {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	m, ok := p.ready[ep]
	if !ok {
		// The pool's snapshot is ahead of this picker: a new one is
		// on its way.
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	rpc, _ := info.Ctx.Value(rpcKey{}).(*rpcState)
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

// IsOverflow reports whether err (an RPC's error) is a circuit breaker's
// refusal, and returns the threshold's error (circuit.ErrMaxRequests,
// circuit.ErrRetryBudgetExhausted...). gRPC passes the status on, not the
// error value, so it is recognised by its message.
func IsOverflow(err error) (error, bool) {
	var oe overflowError
	if errors.As(err, &oe) {
		return oe.err, true
	}
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return nil, false
	}
	for _, e := range []error{circuit.ErrRetryBudgetExhausted, circuit.ErrMaxRetries, circuit.ErrMaxRequests, circuit.ErrMaxPendingRequests, circuit.ErrMaxConnections} {
		if s.Message() == "grpclb: "+e.Error() {
			return e, true
		}
	}
	return nil, false
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

// UnaryClientInterceptor lets the balancer tell an RPC's retries (made by
// gRPC's retryPolicy) from first attempts, so the retry budget and the
// max-retries threshold apply to them, and counts an RPC waiting for its
// next attempt as a pending request (the budget's base, with the requests
// in flight). Install it with grpc.WithChainUnaryInterceptor; without it
// every attempt is admitted as a first attempt.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		s := new(rpcState)
		defer s.end()
		return invoker(context.WithValue(ctx, rpcKey{}, s), method, req, reply, cc, opts...)
	}
}
