package httplb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/circuit"
)

// MetaScheme is the member metadata key (see balancer.Backend.Meta) that
// sets the URL scheme requests to that member use: "http" or "https".
const MetaScheme = "scheme"

// Defaults of Config's zero fields.
const (
	DefaultRetries             = 2
	DefaultMaxIdleConnsPerHost = 256
)

// ErrConfig is wrapped by the errors New returns for an invalid Config.
var ErrConfig = errors.New("httplb: invalid configuration")

// errServerError is the outcome reported to a member that answered 5xx.
var errServerError = errors.New("httplb: backend answered 5xx")

// Config configures a Transport. Only Pool is required.
type Config struct {
	// Pool is the fleet requests go to. The Transport never closes it.
	Pool *balancer.Pool

	// Key derives each request's pick key (balancer.Key.Request): a
	// header, cookie, path or query parameter, or the client address,
	// which is the request's RemoteAddr (set on the requests an
	// httputil.ReverseProxy forwards; empty on a client's own requests,
	// which then pick freely). A key set on the request's context with
	// WithKey takes precedence. The zero value is no key.
	Key balancer.Key

	// Scheme is the URL scheme of requests to members without a
	// MetaScheme entry. Empty means the request URL's scheme, or "http"
	// when it has none.
	Scheme string

	// NewTransport returns the RoundTripper that carries requests to one
	// member; it is called once per member, the first time the member is
	// picked, and the member's idle connections are closed when it leaves
	// the pool (if the RoundTripper has CloseIdleConnections). Nil means
	// an http.Transport per member, without proxy, that keeps up to
	// DefaultMaxIdleConnsPerHost idle connections, opens at most
	// Circuit.Member.MaxConnections (requests beyond wait: they are
	// pending requests) and counts its connections in the circuit
	// breakers. A NewTransport that returns one shared RoundTripper for
	// every member works too (see the package doc for the measured
	// difference); connection thresholds then do not apply.
	NewTransport func(b balancer.Backend) http.RoundTripper

	// Retries is how many times an idempotent request (GET, HEAD,
	// OPTIONS, TRACE, PUT, DELETE, or one with an Idempotency-Key
	// header) whose body can be sent again is retried on another member
	// after a connection error or a 502, 503 or 504 answer. Zero means
	// DefaultRetries; negative disables retries.
	Retries int
	// Backoff is the jittered exponential wait before each retry
	// (Envoy's: 25 ms base, 250 ms cap by default). A retry whose wait
	// would pass the request context's deadline is not made.
	Backoff circuit.Backoff

	// Circuit sets the circuit breakers and the retry budget, for the
	// pool and per member. The zero value limits nothing.
	Circuit circuit.Config

	// Logger receives retries and refusals at debug level, each with the
	// attribute pool=<name>. Nil means slog.Default().
	Logger *slog.Logger
}

// Transport is an http.RoundTripper that sends each request to a member
// of a balancer.Pool: it picks, rewrites the request URL's scheme and host
// to the member, tracks the work with Endpoint.Start and Done (which feed
// load-aware policies and the pool's passive health checker), enforces
// circuit breakers and retries idempotent requests on another member.
//
// A Transport is safe for concurrent use. RoundTrip blocks for the
// request's duration and the backoff between attempts, never past the
// request context.
type Transport struct {
	cfg     Config
	pool    *balancer.Pool
	retries int
	cg      *circuit.Group
	log     *slog.Logger
	pending bool // a pending-request threshold is set: trace connection waits

	members sync.Map // *balancer.Endpoint → *member
	version atomic.Uint64
	pruneMu sync.Mutex
}

// member is the per-member state of a Transport.
type member struct {
	rt  http.RoundTripper
	brk *circuit.Breaker
}

// New returns a Transport for cfg.
func New(cfg Config) (*Transport, error) {
	switch {
	case cfg.Pool == nil:
		return nil, fmt.Errorf("%w: Pool is required", ErrConfig)
	case cfg.Backoff.Base < 0 || cfg.Backoff.Max < 0:
		return nil, fmt.Errorf("%w: negative backoff", ErrConfig)
	case cfg.Scheme != "" && cfg.Scheme != "http" && cfg.Scheme != "https":
		return nil, fmt.Errorf("%w: scheme %q", ErrConfig, cfg.Scheme)
	}
	cg, err := circuit.NewGroup(cfg.Circuit)
	if err != nil {
		return nil, fmt.Errorf("httplb: pool %q: %w", cfg.Pool.Name(), err)
	}
	t := &Transport{
		cfg:     cfg,
		pool:    cfg.Pool,
		retries: cfg.Retries,
		cg:      cg,
		pending: cfg.Circuit.Pool.MaxPendingRequests > 0 || cfg.Circuit.Member.MaxPendingRequests > 0,
	}
	if t.retries == 0 {
		t.retries = DefaultRetries
	}
	if t.retries < 0 {
		t.retries = 0
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	t.log = log.With("pool", cfg.Pool.Name())
	t.version.Store(cfg.Pool.Snapshot().Version)
	return t, nil
}

// Circuit returns the Transport's circuit breakers, for their statistics
// (overflow counts) and to change thresholds at run time.
func (t *Transport) Circuit() *circuit.Group { return t.cg }

// CloseIdleConnections closes the idle connections of every member's
// RoundTripper that has such a method.
func (t *Transport) CloseIdleConnections() {
	t.members.Range(func(_, v any) bool {
		closeIdle(v.(*member).rt)
		return true
	})
}

func closeIdle(rt http.RoundTripper) {
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type keyCtx struct{}

// WithKey returns a context that makes a Transport pick with key (hashed
// as balancer.HashString) instead of its Config.Key, for calls whose
// affinity key is known to the caller rather than carried in the request
// (a user id, a shard).
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyCtx{}, balancer.WithKey(balancer.HashString(key)))
}

// pickInfo derives the request's pick key.
func (t *Transport) pickInfo(r *http.Request) balancer.PickInfo {
	if v, ok := r.Context().Value(keyCtx{}).(balancer.PickInfo); ok {
		return v
	}
	if t.cfg.Key.IsZero() {
		return balancer.PickInfo{}
	}
	var client netip.Addr
	if r.RemoteAddr != "" {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			client = ap.Addr()
		}
	}
	return t.cfg.Key.Request(balancer.HTTPRequest(r, client))
}

// maxAvoid is how many members a retry tries to avoid repeating.
const maxAvoid = 8

// RoundTrip sends r to a member of the pool; see Transport. Errors from
// the circuit breakers wrap circuit.ErrOpen. When a retry is refused by
// the breakers (the retry budget, say) RoundTrip returns the last
// attempt's outcome: its response if it had one, or its error joined with
// the breaker's.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.maybePrune()
	ctx := r.Context()
	info := t.pickInfo(r)
	replay := t.retries > 0 && retryable(r)
	var avoid [maxAvoid]*balancer.Endpoint
	ep, err := t.pick(info, avoid[:0])
	if err != nil {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("httplb: pool %q: %w", t.pool.Name(), err)
	}
	retry := false
	for attempt := 0; ; attempt++ {
		m := t.member(ep)
		if err := t.cg.Acquire(m.brk, circuit.Requests); err != nil {
			if retry {
				t.cg.Release(m.brk, circuit.Retries)
			}
			if r.Body != nil && attempt == 0 {
				r.Body.Close()
			}
			return nil, fmt.Errorf("httplb: pool %q: %s: %w", t.pool.Name(), ep.Addr(), err)
		}
		req, err := t.outgoing(r, ep, attempt)
		if err != nil {
			t.release(m, retry)
			return nil, err
		}
		ep.Start()
		start := time.Now()
		resp, err := t.send(m, req)
		now := time.Now()
		lat := now.Sub(start)
		outcome, again := judge(ctx, resp, err)

		var next *balancer.Endpoint
		var refused error
		var delay time.Duration
		if again && replay && attempt < t.retries {
			if attempt < maxAvoid {
				avoid[attempt] = ep
			}
			var fits bool
			if delay, fits = t.cfg.Backoff.Next(ctx, attempt+1); fits {
				next, refused = t.retryTarget(ctx, info, avoid[:min(attempt+1, maxAvoid)], ep)
			}
		}
		if next == nil {
			// Final attempt: hand the outcome back.
			if err != nil {
				ep.DoneAt(outcome, lat, now)
				t.release(m, retry)
				if refused != nil {
					return nil, fmt.Errorf("httplb: pool %q: %s: %w (not retried: %w)", t.pool.Name(), ep.Addr(), err, refused)
				}
				return nil, fmt.Errorf("httplb: pool %q: %s: %w", t.pool.Name(), ep.Addr(), err)
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// The body is the upgraded connection (an
				// io.ReadWriteCloser that httputil.ReverseProxy
				// needs as is): the request is over.
				ep.DoneAt(outcome, lat, now)
				t.release(m, retry)
				return resp, nil
			}
			resp.Body = &body{rc: resp.Body, t: t, ep: ep, m: m, retry: retry, outcome: outcome, lat: lat}
			return resp, nil
		}
		// Retry: next holds a retry slot.
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) //nolint:errcheck // draining for reuse is best effort
			resp.Body.Close()
		}
		ep.DoneAt(outcome, lat, now)
		t.release(m, retry)
		retry = true
		t.log.Debug("httplb: retrying", "member", ep.Addr(), "next", next.Addr(), "attempt", attempt+1, "outcome", outcomeString(resp, err))
		if err := circuit.Sleep(ctx, delay); err != nil {
			t.cg.Release(t.member(next).brk, circuit.Retries)
			return nil, fmt.Errorf("httplb: pool %q: %w", t.pool.Name(), err)
		}
		ep = next
	}
}

// retryTarget picks the member for a retry, avoiding those tried, and
// takes a retry slot on it from the breakers. It returns nil when no retry
// should be made: no member, no time left before the deadline, or the
// breakers refused (counted as overflow there; their error is returned).
func (t *Transport) retryTarget(ctx context.Context, info balancer.PickInfo, avoid []*balancer.Endpoint, last *balancer.Endpoint) (*balancer.Endpoint, error) {
	if ctx.Err() != nil {
		return nil, nil
	}
	if info.HasKey {
		// A hash policy sends the same key to the same member: perturb
		// it, as a retry is about finding another member.
		info.Key = balancer.Mix64(info.Key + uint64(len(avoid)))
	}
	next, err := t.pick(info, avoid)
	if err != nil {
		return nil, nil
	}
	if err := t.cg.Acquire(t.member(next).brk, circuit.Retries); err != nil {
		t.log.Debug("httplb: retry refused", "member", last.Addr(), "err", err)
		return nil, err
	}
	return next, nil
}

// release gives back the breaker slots of one attempt.
func (t *Transport) release(m *member, retry bool) {
	t.cg.Release(m.brk, circuit.Requests)
	if retry {
		t.cg.Release(m.brk, circuit.Retries)
	}
}

// pick picks a member, trying a few times to get one not in avoid.
func (t *Transport) pick(info balancer.PickInfo, avoid []*balancer.Endpoint) (*balancer.Endpoint, error) {
	snap := t.pool.Snapshot()
	var ep *balancer.Endpoint
	for i := 0; i <= 2*len(avoid); i++ {
		var err error
		ep, err = snap.Pick(info)
		if err != nil {
			return nil, err
		}
		if !contains(avoid, ep) {
			return ep, nil
		}
		if info.HasKey {
			info.Key = balancer.Mix64(info.Key)
		}
	}
	return ep, nil
}

func contains(s []*balancer.Endpoint, ep *balancer.Endpoint) bool {
	for _, e := range s {
		if e == ep {
			return true
		}
	}
	return false
}

// outgoing returns the request for one attempt: a shallow copy of r with
// the URL pointing at ep (RoundTrippers must not modify the request they
// are given) and, for a retry, a fresh body from GetBody.
func (t *Transport) outgoing(r *http.Request, ep *balancer.Endpoint, attempt int) (*http.Request, error) {
	out := new(http.Request)
	*out = *r
	u := *r.URL
	out.URL = &u
	out.URL.Host = ep.Addr().String()
	out.URL.Scheme = t.scheme(r, ep)
	if attempt > 0 && r.Body != nil && r.Body != http.NoBody {
		b, err := r.GetBody()
		if err != nil {
			return nil, fmt.Errorf("httplb: pool %q: replaying the body: %w", t.pool.Name(), err)
		}
		out.Body = b
	}
	return out, nil
}

func (t *Transport) scheme(r *http.Request, ep *balancer.Endpoint) string {
	if s := ep.Meta(MetaScheme); s != "" {
		return s
	}
	if t.cfg.Scheme != "" {
		return t.cfg.Scheme
	}
	if r.URL.Scheme != "" {
		return r.URL.Scheme
	}
	return "http"
}

// send runs one attempt on m, counting the time it waits for a connection
// as a pending request when a pending threshold is set.
func (t *Transport) send(m *member, req *http.Request) (*http.Response, error) {
	if !t.pending {
		return m.rt.RoundTrip(req)
	}
	if err := t.cg.Acquire(m.brk, circuit.PendingRequests); err != nil {
		return nil, fmt.Errorf("httplb: pool %q: %w", t.pool.Name(), err)
	}
	var once sync.Once
	done := func() { once.Do(func() { t.cg.Release(m.brk, circuit.PendingRequests) }) }
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { done() }}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := m.rt.RoundTrip(req)
	done()
	return resp, err
}

// judge classifies an attempt's outcome: the error to report to the
// member (nil for success, or for failures that are not the member's
// fault) and whether another member might do better.
func judge(ctx context.Context, resp *http.Response, err error) (outcome error, again bool) {
	if err != nil {
		if ctx.Err() != nil {
			return nil, false // the caller gave up
		}
		if errors.Is(err, circuit.ErrOpen) {
			return nil, true // a connection threshold, not the member
		}
		return err, true
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return errServerError, true
	}
	if resp.StatusCode >= 500 {
		return errServerError, false
	}
	return nil, false
}

func outcomeString(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// retryable reports whether r may be sent again: an idempotent method (or
// an idempotency key) and a body that is absent or can be replayed.
func retryable(r *http.Request) bool {
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
	default:
		if _, ok := r.Header["Idempotency-Key"]; !ok {
			if _, ok := r.Header["X-Idempotency-Key"]; !ok {
				return false
			}
		}
	}
	return r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
}

// member returns ep's per-member state, creating it on first use.
func (t *Transport) member(ep *balancer.Endpoint) *member {
	if v, ok := t.members.Load(ep); ok {
		return v.(*member)
	}
	m := &member{brk: t.cg.Member(ep.Addr())}
	if t.cfg.NewTransport != nil {
		m.rt = t.cfg.NewTransport(ep.Backend())
	} else {
		m.rt = t.defaultTransport(m.brk)
	}
	if v, loaded := t.members.LoadOrStore(ep, m); loaded {
		closeIdle(m.rt)
		return v.(*member)
	}
	return m
}

// defaultTransport returns the http.Transport of one member.
func (t *Transport) defaultTransport(brk *circuit.Breaker) *http.Transport {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if err := t.cg.Acquire(brk, circuit.Connections); err != nil {
				return nil, fmt.Errorf("httplb: pool %q: %s: %w", t.pool.Name(), addr, err)
			}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				t.cg.Release(brk, circuit.Connections)
				return nil, err
			}
			return &countedConn{Conn: c, release: func() { t.cg.Release(brk, circuit.Connections) }}, nil
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   DefaultMaxIdleConnsPerHost,
		MaxConnsPerHost:       t.cfg.Circuit.Member.MaxConnections,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// countedConn gives its connection slot back once, when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// maybePrune drops the state of members that left the pool (closing their
// idle connections) when the pool has published a new snapshot.
func (t *Transport) maybePrune() {
	snap := t.pool.Snapshot()
	if snap.Version == t.version.Load() || !t.pruneMu.TryLock() {
		return
	}
	defer t.pruneMu.Unlock()
	t.version.Store(snap.Version)
	t.members.Range(func(k, v any) bool {
		ep := k.(*balancer.Endpoint)
		if t.pool.Endpoint(ep.Addr()) != ep {
			t.members.Delete(ep)
			if cur := t.pool.Endpoint(ep.Addr()); cur == nil {
				t.cg.Forget(ep.Addr())
			}
			closeIdle(v.(*member).rt)
		}
		return true
	})
}

// body reports the end of a request to its member and the breakers when
// the caller has read the response to its end or closed it.
type body struct {
	rc      io.ReadCloser
	t       *Transport
	ep      *balancer.Endpoint
	m       *member
	retry   bool
	outcome error
	lat     time.Duration
	done    atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.finish(err)
	}
	return n, err
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.finish(nil)
	return err
}

func (b *body) finish(err error) {
	if b.done.Swap(true) {
		return
	}
	outcome := b.outcome
	if outcome == nil && err != nil && err != io.EOF && !errors.Is(err, context.Canceled) {
		outcome = err // the member broke off the body
	}
	b.ep.Done(outcome, b.lat)
	b.t.release(b.m, b.retry)
}
