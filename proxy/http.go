package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/internal/h1"
)

// Defaults for [HTTPConfig] fields left zero.
const (
	DefaultMaxIdleConns           = 512
	DefaultIdleTimeout            = 60 * time.Second
	DefaultDialTimeout            = 5 * time.Second
	DefaultResponseHeaderTimeout  = 60 * time.Second
	DefaultMaxTries               = 3
	DefaultRetryTimeout           = 10 * time.Second
	DefaultQueueTimeout           = 5 * time.Second
	DefaultMaxResponseHeaderBytes = 64 << 10
)

// HTTPConfig configures an [HTTP] proxy. Only Pool is required; every
// other field has a useful zero value, documented on the field.
type HTTPConfig struct {
	// Pool holds the backends and picks one per attempt. Required. Its
	// health follows a health.Checker (Checker.Follow) or Pool.SetHealth;
	// drain a backend with Pool.SetDraining. Every attempt's outcome is
	// reported through Endpoint.Done, which reaches the pool's observer
	// (the checker that follows it): connect errors, timeouts, protocol
	// violations and 5xx responses as failures, with the latency to the
	// response head. The proxy never closes the pool.
	Pool *balancer.Pool
	// Key derives the pick key of every attempt from the request (see
	// balancer.Key): with a hash policy (ring hash, Maglev, rendezvous) a
	// client, user or object then stays on one backend. The client
	// address is the TCP peer or, from TrustedProxies, the rightmost
	// untrusted X-Forwarded-For hop. The zero Key means none: the policy
	// picks freely. Retries on another backend rehash the key.
	Key balancer.Key

	// TLS, when set, makes the proxy talk HTTPS to the backends with this
	// configuration. An empty ServerName means the backend's IP address.
	// Nil means plain HTTP/1.1.
	TLS *tls.Config
	// H2C, when set, makes the proxy talk HTTP/2 with prior knowledge
	// over plain TCP ("h2c") to the backends, one multiplexed connection
	// per backend, through net/http's Transport instead of the
	// purpose-built HTTP/1.1 client. Retries, limits, health, headers and
	// streaming work alike; upgrades (WebSocket) are refused with 502.
	// It cannot be combined with TLS.
	H2C bool

	// MaxIdleConns is the number of idle keep-alive connections kept per
	// backend. Zero means DefaultMaxIdleConns.
	MaxIdleConns int
	// IdleTimeout closes connections idle for longer. Keep it below the
	// backends' own keep-alive timeout. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// DialTimeout bounds connecting (and the TLS handshake). Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the time from sending a request to
	// receiving the response header. Zero means
	// DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// RequestTimeout, when positive, bounds each request as a whole, body
	// streaming and upgraded (WebSocket) connections included. Zero means
	// no limit.
	RequestTimeout time.Duration

	// MaxTries is how many backends a request may be sent to, the first
	// included. Zero means DefaultMaxTries; 1 disables retries.
	MaxTries int
	// RetryTimeout is the time after a request started past which no new
	// attempt begins. Zero means DefaultRetryTimeout.
	RetryTimeout time.Duration
	// Circuit holds Envoy's circuit breakers for the pool and for each
	// member: MaxRequests (requests in flight), MaxRetries (retries in
	// flight) and RetryBudget (retries in flight limited to a share of the
	// requests in flight, so retries cannot multiply the load in an
	// outage). A request over a threshold is answered 503 at once; a retry
	// over one is not made and the last outcome is passed on. The overflow
	// is counted (Circuit().Pool().Stats()) and its error wraps
	// circuit.ErrOpen. The zero value sets no limit. (MaxConns and
	// MaxQueue are HAProxy's queueing limits; the two can be combined.)
	Circuit circuit.Config
	// RetryStatuses lists response statuses (say 502, 503, 504) on which
	// an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or one
	// with an Idempotency-Key) with a replayable body is retried on
	// another backend. The response is passed on when no try is left.
	// Nil means statuses are never retried, only connection failures.
	RetryStatuses []int
	// RetryBufferBytes, when positive, lets the proxy buffer request
	// bodies of known length (Content-Length) up to this size so they can
	// be replayed on another backend. Larger or chunked bodies are
	// streamed and never sent twice once read from. Zero means no
	// buffering: after a byte was sent only bodyless requests are retried;
	// before, any request whose body was not yet read.
	RetryBufferBytes int64

	// MaxConns, when positive, limits the requests in flight per backend.
	// Requests over the limit wait in one FIFO queue shared by all
	// backends (see MaxQueue). Zero means no limit.
	MaxConns int
	// MaxQueue is how many requests may wait for a slot, in total, when
	// every candidate backend is at MaxConns. A full queue answers 503 at
	// once. Zero means no queue: 503 as soon as all are at MaxConns.
	MaxQueue int
	// QueueTimeout is how long a request waits in the queue before a 503.
	// Zero means DefaultQueueTimeout.
	QueueTimeout time.Duration

	// StickyCookie, when set, enables sticky sessions with a cookie of
	// this name whose value is an HMAC-SHA256 of the backend address
	// under CookieKey. A request naming a ready backend goes there;
	// otherwise the proxy picks and re-sets the cookie.
	StickyCookie string
	// CookieKey signs sticky cookies; share it between replicas. Nil means
	// a random key (cookies do not survive a restart). At least 16 bytes.
	CookieKey []byte
	// CookieMaxAge is the sticky cookie's lifetime. Zero means a session
	// cookie.
	CookieMaxAge time.Duration
	// CookieSecure adds the Secure attribute to the sticky cookie.
	CookieSecure bool

	// TrustedProxies are the peers whose X-Forwarded-For, -Proto, -Host
	// and Forwarded headers are extended. From any other peer they are
	// replaced. Empty means no peer is trusted.
	TrustedProxies []netip.Prefix
	// Via, when set, is the pseudonym added in a Via header to requests
	// and responses ("1.1 name"). Empty means no Via.
	Via string

	// FlushInterval controls flushing of response bodies to the client.
	// Streaming responses (text/event-stream, or without Content-Length)
	// are always flushed whenever the proxy has passed on everything the
	// backend sent so far. A positive value also flushes other responses
	// at most once per interval; a negative value flushes after every
	// write. Zero means streaming responses only.
	FlushInterval time.Duration
	// MaxResponseHeaderBytes caps a backend's response head (and each
	// trailer section). Larger answers 502. Zero means
	// DefaultMaxResponseHeaderBytes.
	MaxResponseHeaderBytes int

	// OnAttempt, when set, is called when each attempt ends, on the
	// request's goroutine, with what happened (for access logs naming the
	// backend, and metrics). It must not keep a. Nil costs nothing.
	OnAttempt func(a *Attempt)
	// RewriteRequest, when set, is called before each attempt with the
	// client's request and the backend it is about to go to. It may set
	// r.Host (sent as Host) and change r.Header (the fields forwarded,
	// before the proxy strips hop-by-hop fields and adds the forwarding
	// ones); changes stay for later attempts. Nil costs nothing.
	RewriteRequest func(r *http.Request, backend *balancer.Endpoint)
	// ModifyResponse, when set, is called with each response head before
	// it goes to the client, and may change its status and fields
	// (framing fields excepted). The fast path of [Server], which writes
	// a head from the backend's bytes, then goes through a header map.
	// Nil costs nothing.
	ModifyResponse func(resp *ResponseHead)

	// Logger receives errors at debug level. Nil means slog.Default().
	Logger *slog.Logger
}

// Attempt is what [HTTPConfig.OnAttempt] learns about one attempt to
// forward a request.
type Attempt struct {
	// Request is the client's request.
	Request *http.Request
	// Backend is the member the attempt went to.
	Backend *balancer.Endpoint
	// Try counts the attempts of the request, from 1; Try-1 is the
	// number of retries before this one.
	Try int
	// Status is the backend's response status, 0 when none arrived.
	Status int
	// Bytes counts the response body bytes passed to the client.
	Bytes int64
	// Duration is the attempt's time, from the pick to the end of the
	// response body.
	Duration time.Duration
	// Err is why the attempt failed (a connect error, a timeout, a
	// protocol violation, a 5xx status), nil when it did not.
	Err error
	// Retried reports that another attempt follows.
	Retried bool
}

// ResponseHead is a response head [HTTPConfig.ModifyResponse] may
// change before it goes to the client.
type ResponseHead struct {
	// Request is the client's request.
	Request *http.Request
	// Backend is the member that answered.
	Backend *balancer.Endpoint
	// Status is the status to send.
	Status int
	// Header holds the fields to send; Content-Length, Transfer-Encoding
	// and Connection are the proxy's.
	Header http.Header
}

// HTTP is a reverse proxy for HTTP/1.1 and HTTP/2 clients (as served by
// net/http) to HTTP/1.1 backends picked from a balancer pool. It is an
// [http.Handler] and composes with any middleware and [http.Server].
//
// ServeHTTP is safe for concurrent use. It blocks until the response is
// passed on or fails, and it starts no goroutine per request except for
// protocol upgrades (WebSocket), which copy both ways at once. The
// proxy's own goroutine follows pool changes and closes idle connections;
// [HTTP.Close] stops it.
type HTTP struct {
	pool      *balancer.Pool
	key       balancer.Key
	onAttempt func(*Attempt)
	rewrite   func(*http.Request, *balancer.Endpoint)
	modify    func(*ResponseHead)
	log       *slog.Logger

	tls               *tls.Config
	h2c               *http.Transport // non-nil in h2c mode
	dialer            net.Dialer
	maxIdle           int
	idleTimeout       time.Duration
	dialTimeout       time.Duration
	respHeaderTimeout time.Duration
	requestTimeout    time.Duration
	maxTries          int
	retryTimeout      time.Duration
	cg                *circuit.Group // nil without Circuit
	retryStatus       [600]bool
	retryBuf          int64
	queueTimeout      time.Duration
	maxHead           int
	flushInterval     time.Duration
	trusted           h1.Trusted
	via               string // "name", sent as "1.1 name"

	cookieName string
	cookies    *h1.CookieSigner // nil without StickyCookie

	regMu sync.Mutex
	reg   atomic.Pointer[registry]
	lim   limiter

	tunMu   sync.Mutex
	tunnels map[net.Conn]struct{}
	closed  bool

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ http.Handler = (*HTTP)(nil)

// NewHTTP validates cfg and returns a proxy, with its pool watcher
// running. Call Close when done with it.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	if cfg.Pool == nil {
		return nil, errors.New("proxy: HTTPConfig.Pool is required")
	}
	if cfg.MaxIdleConns < 0 || cfg.IdleTimeout < 0 || cfg.DialTimeout < 0 || cfg.ResponseHeaderTimeout < 0 ||
		cfg.RequestTimeout < 0 || cfg.MaxTries < 0 || cfg.RetryTimeout < 0 || cfg.RetryBufferBytes < 0 ||
		cfg.MaxConns < 0 || cfg.MaxQueue < 0 || cfg.QueueTimeout < 0 || cfg.CookieMaxAge < 0 || cfg.MaxResponseHeaderBytes < 0 {
		return nil, errors.New("proxy: HTTPConfig sizes and durations must not be negative")
	}
	h := &HTTP{
		pool:              cfg.Pool,
		key:               cfg.Key,
		onAttempt:         cfg.OnAttempt,
		rewrite:           cfg.RewriteRequest,
		modify:            cfg.ModifyResponse,
		log:               cfg.Logger,
		tls:               cfg.TLS,
		maxIdle:           orInt(cfg.MaxIdleConns, DefaultMaxIdleConns),
		idleTimeout:       orDur(cfg.IdleTimeout, DefaultIdleTimeout),
		dialTimeout:       orDur(cfg.DialTimeout, DefaultDialTimeout),
		respHeaderTimeout: orDur(cfg.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		requestTimeout:    cfg.RequestTimeout,
		maxTries:          orInt(cfg.MaxTries, DefaultMaxTries),
		retryTimeout:      orDur(cfg.RetryTimeout, DefaultRetryTimeout),
		retryBuf:          cfg.RetryBufferBytes,
		queueTimeout:      orDur(cfg.QueueTimeout, DefaultQueueTimeout),
		maxHead:           orInt(cfg.MaxResponseHeaderBytes, DefaultMaxResponseHeaderBytes),
		flushInterval:     cfg.FlushInterval,
		via:               cfg.Via,
		lim:               limiter{max: cfg.MaxConns, maxQueue: cfg.MaxQueue},
		tunnels:           make(map[net.Conn]struct{}),
		stop:              make(chan struct{}),
		done:              make(chan struct{}),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if cfg.Circuit != (circuit.Config{}) {
		cg, err := circuit.NewGroup(cfg.Circuit)
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		h.cg = cg
	}
	if cfg.H2C {
		if cfg.TLS != nil {
			return nil, errors.New("proxy: H2C and TLS are exclusive")
		}
		h.h2c = h.newH2CTransport()
	}
	for _, s := range cfg.RetryStatuses {
		if s < 100 || s >= len(h.retryStatus) {
			return nil, fmt.Errorf("proxy: invalid retry status %d", s)
		}
		h.retryStatus[s] = true
	}
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			return nil, errors.New("proxy: invalid prefix in TrustedProxies")
		}
		h.trusted = append(h.trusted, p.Masked())
	}
	if cfg.Via != "" && !h1.IsToken(cfg.Via) {
		return nil, fmt.Errorf("proxy: Via %q is not a token", cfg.Via)
	}
	if cfg.StickyCookie != "" {
		if !h1.IsToken(cfg.StickyCookie) {
			return nil, fmt.Errorf("proxy: invalid StickyCookie name %q", cfg.StickyCookie)
		}
		signer, err := h1.NewCookieSigner("proxy", cfg.CookieKey, cfg.CookieMaxAge, cfg.CookieSecure)
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		h.cookieName, h.cookies = cfg.StickyCookie, signer
	}
	h.reg.Store(&registry{byEP: map[*balancer.Endpoint]*upstream{}, byToken: map[string]*upstream{}})
	h.sync()
	go h.watch()
	return h, nil
}

func orInt(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

func orDur(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}

// Close stops the pool watcher, closes idle backend connections and
// tunnels (upgraded connections). Requests in flight finish; their
// connections are closed as they end. Close is idempotent; the proxy must
// not serve requests afterwards.
func (h *HTTP) Close() error {
	h.closeOnce.Do(func() {
		close(h.stop)
		<-h.done
		for _, u := range h.reg.Load().byEP {
			u.retired.Store(true)
			u.closeIdle(time.Time{})
		}
		if h.h2c != nil {
			h.h2c.CloseIdleConnections()
		}
		h.tunMu.Lock()
		h.closed = true
		for c := range h.tunnels {
			c.Close()
		}
		h.tunMu.Unlock()
	})
	return nil
}

// Circuit returns the proxy's circuit breakers (see HTTPConfig.Circuit),
// with their gauges and overflow counts, or nil without them.
func (h *HTTP) Circuit() *circuit.Group { return h.cg }

// IdleConns returns the number of idle connections kept to addr. It is
// meant for tests and metrics.
func (h *HTTP) IdleConns(addr netip.AddrPort) int {
	for _, u := range h.reg.Load().byEP {
		if u.addr == addr {
			u.mu.Lock()
			n := len(u.idle)
			u.mu.Unlock()
			return n
		}
	}
	return 0
}

// Short error bodies.
var (
	hdrTextPlain = []string{"text/plain; charset=utf-8"}
	hdrNoSniff   = []string{"nosniff"}
)

// errBadRequest marks a client request the proxy refuses to forward.
var errBadRequest = errors.New("proxy: invalid request header")

// errStatus is the failure recorded for a 5xx response.
type errStatus int

func (e errStatus) Error() string { return "proxy: backend answered " + strconv.Itoa(int(e)) }

// request is the per-request state shared by the attempts.
type request struct {
	r          *http.Request
	start      time.Time
	deadline   time.Time // whole-request deadline, or zero
	hasBody    bool
	buffered   []byte // replayable body, or nil
	consumed   bool   // read from r.Body (not replayable unless buffered)
	idempotent bool
	upgrade    string // the Upgrade header value to forward, or ""
	peer       netip.Addr
	trusted    bool
	sticky     *upstream // named by the request's cookie
	info       balancer.PickInfo
	clientHost string // the Host the client asked for, before RewriteRequest

	// What the current attempt saw, for OnAttempt.
	status int
	bytes  int64
}

// replayable reports whether the body can be sent again.
func (rq *request) replayable() bool {
	return !rq.hasBody || rq.buffered != nil || !rq.consumed
}

// ServeHTTP forwards r to a backend and its response to w, retrying on
// another backend as configured. Errors answer 400 (a request the proxy
// will not forward), 502 (connection or protocol failure), 503 (no
// backend, queue full or queue timeout) or 504 (timeout) with a short
// text body.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.serve(w, r) {
		panic(http.ErrAbortHandler)
	}
}

// serve is the core both front-ends share (ServeHTTP under net/http and
// [Server]): it forwards r and passes the response on to w. It reports
// whether the response was cut short by the backend after its head went
// out, in which case the client connection must be aborted.
func (h *HTTP) serve(w http.ResponseWriter, r *http.Request) (abort bool) {
	if r.Method == http.MethodConnect {
		writeError(w, http.StatusMethodNotAllowed, "proxy: CONNECT is not supported\n")
		return false
	}
	rq := request{r: r}
	h.begin(w, &rq)
	if rq.hasBody && h.retryBuf > 0 && r.ContentLength > 0 && r.ContentLength <= h.retryBuf {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			writeError(w, http.StatusBadRequest, "proxy: reading request body failed\n")
			return false
		}
		rq.buffered = buf
	}

	var triedBuf [4]*upstream
	tried := triedBuf[:0]
	var lastErr error
	for attempt := 1; ; attempt++ {
		u, err := h.beginAttempt(r.Context(), &rq, tried, attempt, true)
		if err != nil {
			h.fail(w, r, attemptErr(err, lastErr, attempt))
			return false
		}
		mayRetry := attempt < h.maxTries && time.Since(rq.start) < h.retryTimeout
		var t0 time.Time
		if h.onAttempt != nil {
			t0, rq.status, rq.bytes = time.Now(), 0, 0
		}
		res, err := h.try(w, &rq, u, mayRetry)
		h.endAttempt(&rq, u, attempt, t0, res, err)
		switch res {
		case resDone:
			return false
		case resAbort:
			return true
		case resFail:
			h.fail(w, r, err)
			return false
		}
		lastErr = err
		tried = append(tried, u)
		rq.sticky = nil
		h.log.Debug("proxy: retrying on another backend", "backend", u.addr, "err", err, "attempt", attempt)
	}
}

// begin fills rq (whose r is set) with what every attempt needs, from
// the request alone: its deadline, framing, idempotency, peer, upgrade,
// sticky upstream and pick key. The body is not read.
func (h *HTTP) begin(w http.ResponseWriter, rq *request) {
	r := rq.r
	rq.start, rq.clientHost = time.Now(), r.Host
	if rq.clientHost == "" && r.URL != nil {
		rq.clientHost = r.URL.Host
	}
	if h.requestTimeout > 0 {
		rq.deadline = rq.start.Add(h.requestTimeout)
	}
	rq.hasBody = r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	rq.idempotent = isIdempotent(r)
	if !rq.peer.IsValid() {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			rq.peer = ap.Addr().Unmap()
		}
	}
	rq.trusted = rq.peer.IsValid() && h.trusted.Contains(rq.peer)
	if r.ProtoMajor == 1 && headerHasToken(r.Header["Connection"], "upgrade") {
		if v := r.Header["Upgrade"]; len(v) == 1 && v[0] != "" {
			rq.upgrade = v[0]
		}
	}
	if h.cookieName != "" {
		rq.sticky = h.stickyUpstream(r)
	}
	if !h.key.IsZero() {
		rq.info = h.pickInfo(w, r, rq.peer)
	}
	if (h.rewrite != nil || h.modify != nil || h.onAttempt != nil) && r.URL.Path == "" && len(r.RequestURI) > 0 && r.RequestURI[0] == '/' {
		// [Server] leaves an origin-form target in RequestURI only; the
		// hooks see it in r.URL as under net/http.
		if u, err := url.ParseRequestURI(r.RequestURI); err == nil {
			r.URL = u
		}
	}
}

// errMustQueue is beginAttempt's answer, when asked not to wait, for a
// request that would have to queue for a connection slot.
var errMustQueue = errors.New("proxy: request must queue")

// beginAttempt starts attempt number n (from 1) of rq: it picks an
// upstream and takes its connection slot (queueing when wait, or failing
// with errMustQueue), runs RewriteRequest and takes the circuit breaker's
// request (and, for a retry, retry) slots. Release them with endAttempt.
func (h *HTTP) beginAttempt(ctx context.Context, rq *request, tried []*upstream, n int, wait bool) (*upstream, error) {
	u, err := h.acquire(ctx, rq.sticky, tried, rq.info, wait)
	if err != nil {
		return nil, err
	}
	if h.rewrite != nil {
		h.rewrite(rq.r, u.ep)
	}
	if br := u.br; br != nil {
		if err := h.cg.Acquire(br, circuit.Requests); err != nil {
			h.lim.release(u)
			return nil, err
		}
		if n > 1 {
			// A retry: within MaxRetries and the retry budget, or not
			// at all.
			if err := h.cg.Acquire(br, circuit.Retries); err != nil {
				h.cg.Release(br, circuit.Requests)
				h.lim.release(u)
				return nil, err
			}
		}
	}
	return u, nil
}

// attemptErr is the error to answer with when attempt n could not
// start with err, after an earlier attempt failed with lastErr.
func attemptErr(err, lastErr error, n int) error {
	if errors.Is(err, circuit.ErrOpen) {
		if n > 1 {
			return errors.Join(lastErr, err)
		}
		return err
	}
	if lastErr == nil || errors.Is(err, ErrQueueFull) || errors.Is(err, ErrQueueTimeout) {
		return err
	}
	return lastErr
}

// endAttempt releases what beginAttempt took and tells OnAttempt.
func (h *HTTP) endAttempt(rq *request, u *upstream, n int, t0 time.Time, res int, err error) {
	h.lim.release(u)
	if br := u.br; br != nil {
		h.cg.Release(br, circuit.Requests)
		if n > 1 {
			h.cg.Release(br, circuit.Retries)
		}
	}
	if h.onAttempt != nil {
		h.reportAttempt(rq, u, n, t0, res, err)
	}
}

// Outcomes of one attempt.
const (
	resDone  = iota // a response was passed on (perhaps cut short by the client)
	resRetry        // failed before a response was passed on; safe to try again
	resFail         // failed before a response was passed on; answer an error
	resAbort        // the response was cut short by the backend: abort the client's
)

// reportAttempt tells OnAttempt how an attempt went.
func (h *HTTP) reportAttempt(rq *request, u *upstream, try int, t0 time.Time, res int, err error) {
	a := Attempt{
		Request:  rq.r,
		Backend:  u.ep,
		Try:      try,
		Status:   rq.status,
		Bytes:    rq.bytes,
		Duration: time.Since(t0),
		Err:      err,
		Retried:  res == resRetry,
	}
	if a.Err == nil && a.Status >= 500 {
		a.Err = errStatus(a.Status)
	}
	h.onAttempt(&a)
}

// pickInfo derives the request's pick key. Behind [Server] the key is
// read from the parsed head without allocating.
func (h *HTTP) pickInfo(w http.ResponseWriter, r *http.Request, peer netip.Addr) balancer.PickInfo {
	client := h.trusted.Client(peer, r.Header["X-Forwarded-For"])
	if sc, ok := w.(*srvConn); ok {
		sc.key = h1.KeyRequest{Head: &sc.head, Client: client}
		return h.key.Request(&sc.key)
	}
	return h.key.Request(balancer.HTTPRequest(r, client))
}

// acquire picks an upstream, preferring the sticky one when ready and
// avoiding those already tried, and takes a connection slot on it,
// queueing when every candidate is at MaxConns. A pick that lands on a
// tried upstream is made again with the key rehashed.
func (h *HTTP) acquire(ctx context.Context, sticky *upstream, tried []*upstream, info balancer.PickInfo, wait bool) (*upstream, error) {
	if sticky != nil && sticky.ready() {
		if h.lim.tryAcquire(sticky) {
			return sticky, nil
		}
		if h.lim.maxQueue > 0 {
			if !wait {
				return nil, errMustQueue
			}
			return h.lim.wait(ctx, sticky, nil, h.queueTimeout)
		}
		return nil, ErrQueueFull
	}
	snap := h.pool.Snapshot()
	n := len(snap.Ready)
	if n == 0 {
		return nil, balancer.ErrNoBackend
	}
	var first *upstream
	for range 2*n + 2 {
		ep, err := snap.Picker.Pick(info)
		if err != nil {
			return nil, err
		}
		u := h.upstreamFor(ep)
		if contains(tried, u) {
			if len(tried) >= n {
				// Everything was tried: allow a second go on one.
				tried = tried[:0]
			}
			info.Key = balancer.Mix64(info.Key)
			continue
		}
		if h.lim.tryAcquire(u) {
			return u, nil
		}
		info.Key = balancer.Mix64(info.Key)
		if first == nil {
			first = u
		}
	}
	if first == nil {
		// A policy that keeps picking what was tried (first available, a
		// hash that lands there again): take the ready ones in order.
		for _, w := range snap.Ready {
			u := h.upstreamFor(w.Endpoint)
			if contains(tried, u) {
				continue
			}
			if h.lim.tryAcquire(u) {
				return u, nil
			}
			if first == nil {
				first = u
			}
		}
	}
	if first == nil {
		return nil, balancer.ErrNoBackend
	}
	if h.lim.maxQueue == 0 {
		return nil, ErrQueueFull
	}
	if !wait {
		return nil, errMustQueue
	}
	return h.lim.wait(ctx, nil, tried, h.queueTimeout)
}

// try sends the request to u once and passes the response on.
func (h *HTTP) try(w http.ResponseWriter, rq *request, u *upstream, mayRetry bool) (int, error) {
	if h.h2c != nil {
		return h.tryH2C(w, rq, u, mayRetry)
	}
	r := rq.r
	ctx := r.Context()
	ep := u.ep
	ep.Start()
	t0 := time.Now()
	pc := u.getIdle(t0, h.idleTimeout)
	if pc == nil {
		var err error
		pc, err = h.dial(ctx, u)
		if err != nil {
			if ctx.Err() != nil {
				ep.Done(nil, 0)
				return resDone, nil
			}
			ep.Done(err, 0)
			if mayRetry {
				return resRetry, err // nothing was sent
			}
			return resFail, err
		}
	}
	dl := t0.Add(h.respHeaderTimeout)
	if !rq.deadline.IsZero() && rq.deadline.Before(dl) {
		dl = rq.deadline
	}
	// A bodyless request is written without blocking (see connIO): only
	// the read side needs a deadline, which halves the timer updates.
	fullDeadline := rq.hasBody || pc.io.rc == nil // TLS writes block like reads
	if fullDeadline {
		pc.conn.SetDeadline(dl)
	} else {
		pc.conn.SetReadDeadline(dl)
	}
	// A context that is never cancelled ([Server]'s) needs no hook, which
	// saves its allocations.
	stop := noStop
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.interrupt)
	}

	reused := pc.reused
	err := h.writeRequest(pc, rq)
	if err == nil {
		err = h.readFinalHead(pc, r.Method == http.MethodHead)
	}
	if err != nil {
		stop()
		pc.close()
		if ctx.Err() != nil {
			ep.Done(nil, 0)
			return resDone, nil
		}
		var cbe clientBodyError
		if errors.Is(err, errBadRequest) || errors.As(err, &cbe) {
			ep.Done(nil, 0)
			return resFail, err
		}
		// A keep-alive connection closed by the backend is not its
		// failure; a timeout, a refused or reset fresh connection, or a
		// protocol violation is.
		if !reused || isTimeout(err) || errors.Is(err, ErrUpstreamProtocol) {
			ep.Done(err, 0)
		} else {
			ep.Done(nil, 0)
		}
		// After bytes went out, only an idempotent request is sent again:
		// the backend may have acted on it before the connection broke.
		if mayRetry && rq.replayable() && rq.idempotent && !errors.Is(err, ErrUpstreamProtocol) {
			if rq.buffered == nil && rq.hasBody {
				rq.consumed = true // body bytes may have gone
			}
			return resRetry, err
		}
		return resFail, err
	}
	head := &pc.head
	latency := time.Since(t0)
	rq.status = head.status
	failed := head.status >= 500
	if failed && mayRetry && h.retryStatus[head.status] && rq.idempotent && rq.replayable() {
		stop()
		pc.close()
		ep.Done(errStatus(head.status), latency)
		return resRetry, errStatus(head.status)
	}
	if head.status == http.StatusSwitchingProtocols {
		if rq.upgrade == "" || head.upgrade == 0 {
			stop()
			pc.close()
			ep.Done(ErrUpstreamProtocol, latency)
			return resFail, fmt.Errorf("%w: unsolicited 101 Switching Protocols", ErrUpstreamProtocol)
		}
		stop()
		err := h.tunnel(w, rq, pc)
		ep.Done(nil, latency)
		if err != nil {
			return resFail, err
		}
		return resDone, nil
	}

	bodyless := head.bodyless(r.Method == http.MethodHead)
	// Lift the header deadline for the body, unless the whole body is
	// already buffered (the next request sets its own deadline).
	if fullDeadline || !bodyless && (head.contentLength < 0 || int64(pc.br.Buffered()) < head.contentLength) {
		pc.conn.SetDeadline(rq.deadline) // zero when there is no request deadline
	}
	hdr := h.passHead(w, rq, u, head, bodyless)
	reusable := !head.closeConn && rq.upgrade == ""
	var upErr, clErr error
	if !bodyless {
		if head.contentLength < 0 && !head.chunked {
			reusable = false // delimited by close
		}
		rq.bytes, upErr, clErr = h.copyBody(w, pc, head, hdr)
	}
	stop()
	if upErr != nil && ctx.Err() != nil {
		upErr, clErr = nil, ctx.Err() // interrupted by the client going away
	}
	if upErr != nil {
		ep.Done(upErr, latency)
	} else if failed {
		ep.Done(errStatus(head.status), latency)
	} else {
		ep.Done(nil, latency)
	}
	if upErr == nil && clErr == nil && reusable {
		u.put(pc, h.maxIdle, time.Now())
	} else {
		pc.close()
	}
	if upErr != nil {
		h.log.Debug("proxy: response body from backend cut short", "backend", u.addr, "err", upErr)
		return resAbort, upErr
	}
	return resDone, nil
}

// passHead writes the response head to w: under [Server] straight from
// the backend's bytes, otherwise through w's header map (which
// ModifyResponse may change). It returns the header map, where trailers
// go.
func (h *HTTP) passHead(w http.ResponseWriter, rq *request, u *upstream, head *respHead, bodyless bool) http.Header {
	hdr := w.Header()
	sc, fast := w.(*srvConn)
	fast = fast && h.modify == nil
	if !fast {
		head.copyTo(hdr)
		if head.normalizedCL() {
			hdr["Content-Length"] = []string{strconv.FormatInt(head.contentLength, 10)}
		}
		if h.via != "" {
			hdr["Via"] = append(hdr["Via"], "1.1 "+h.via)
		}
		if h.cookieName != "" && rq.sticky != u {
			hdr["Set-Cookie"] = append(hdr["Set-Cookie"], h.cookies.SetCookie(h.cookieName, u.token))
		}
	}
	switch {
	case fast:
		// [Server]: the head goes from the backend's bytes straight into
		// the client's buffer, without a header map.
		sc.writeUpstreamHead(h, head, u, rq, bodyless)
	case h.modify != nil:
		rh := ResponseHead{Request: rq.r, Backend: u.ep, Status: head.status, Header: hdr}
		h.modify(&rh)
		w.WriteHeader(rh.Status)
	default:
		w.WriteHeader(head.status)
	}
	return hdr
}

// readFinalHead reads response heads until a final one (or 101),
// skipping interim 1xx responses.
func (h *HTTP) readFinalHead(pc *pconn, isHead bool) error {
	for range 16 {
		if err := readHead(pc.br, &pc.head, &pc.scratch, h.maxHead); err != nil {
			return protoErr(err)
		}
		if pc.head.status >= 200 || pc.head.status == http.StatusSwitchingProtocols {
			return nil
		}
	}
	return fmt.Errorf("%w: too many interim responses", ErrUpstreamProtocol)
}

// copyBody streams the response body from pc to w. It reports an
// upstream error (a body cut short or malformed) and a client error
// (writing to w failed) separately.
func (h *HTTP) copyBody(w http.ResponseWriter, pc *pconn, head *respHead, hdr http.Header) (written int64, upErr, clErr error) {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp

	stream := head.contentLength < 0 || head.eventStream()
	var fl http.Flusher
	if stream || h.flushInterval != 0 {
		fl = flusherOf(w)
	}
	var lastFlush time.Time
	if h.flushInterval > 0 {
		lastFlush = time.Now()
	}
	var cr *chunkedReader
	if head.chunked {
		cr = &chunkedReader{br: pc.br, scratch: &pc.scratch, limit: h.maxHead, trailer: hdr}
	}
	remaining := head.contentLength
	for {
		p := buf
		if head.contentLength >= 0 {
			if remaining == 0 {
				return written, nil, nil
			}
			if remaining < int64(len(p)) {
				p = p[:remaining]
			}
		}
		var n int
		var err error
		if cr != nil {
			n, err = cr.Read(p)
		} else {
			n, err = pc.br.Read(p)
		}
		if n > 0 {
			remaining -= int64(n)
			written += int64(n)
			if _, werr := w.Write(p[:n]); werr != nil {
				return written, nil, werr
			}
			if fl != nil {
				more := pc.br.Buffered() > 0 && (cr == nil || cr.left > 0)
				switch {
				case h.flushInterval < 0,
					stream && !more,
					h.flushInterval > 0 && time.Since(lastFlush) >= h.flushInterval:
					fl.Flush()
					if h.flushInterval > 0 {
						lastFlush = time.Now()
					}
				}
			}
		}
		if err == io.EOF {
			if head.contentLength >= 0 && remaining > 0 {
				return written, io.ErrUnexpectedEOF, nil
			}
			return written, nil, nil
		}
		if err != nil {
			return written, protoErr(err), nil
		}
	}
}

func flusherOf(w http.ResponseWriter) http.Flusher {
	for {
		switch t := w.(type) {
		case http.Flusher:
			return t
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return nil
		}
	}
}

// noStop stands in for a context.AfterFunc stop function.
func noStop() bool { return false }

// eventStream reports whether the response is a Server-Sent Events
// stream (Content-Type text/event-stream).
func (h *respHead) eventStream() bool {
	for _, f := range h.fields {
		if h1.EqualFold(h.name(f), "Content-Type") {
			v := h.value(f)
			return len(v) >= len("text/event-stream") && h1.EqualFold(v[:len("text/event-stream")], "text/event-stream")
		}
	}
	return false
}

func isEventStream(hdr http.Header) bool {
	ct := hdr["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "text/event-stream")
}

// fail answers the client with the status that fits err.
func (h *HTTP) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // nobody is listening
	}
	code, msg := http.StatusBadGateway, "proxy: bad gateway\n"
	var cbe clientBodyError
	switch {
	case errors.As(err, &cbe):
		code, msg = http.StatusBadRequest, "proxy: bad request body\n"
	case errors.Is(err, errBadRequest):
		code, msg = http.StatusBadRequest, "proxy: bad request\n"
	case errors.Is(err, balancer.ErrNoBackend):
		code, msg = http.StatusServiceUnavailable, "proxy: no backend available\n"
	case errors.Is(err, ErrQueueFull):
		code, msg = http.StatusServiceUnavailable, "proxy: backends busy, queue full\n"
	case errors.Is(err, ErrQueueTimeout):
		code, msg = http.StatusServiceUnavailable, "proxy: backends busy, timed out in queue\n"
	case errors.Is(err, circuit.ErrOpen):
		code, msg = http.StatusServiceUnavailable, "proxy: circuit open: too much work in flight\n"
	case isTimeout(err):
		code, msg = http.StatusGatewayTimeout, "proxy: gateway timeout\n"
	case errors.Is(err, ErrUpstreamProtocol):
		msg = "proxy: bad gateway: invalid response from backend\n"
	}
	if code >= 500 {
		h.log.Debug("proxy: request failed", "status", code, "err", err)
	}
	writeError(w, code, msg)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	hdr := w.Header()
	hdr["Content-Type"] = hdrTextPlain
	hdr["X-Content-Type-Options"] = hdrNoSniff
	hdr["Content-Length"] = []string{strconv.Itoa(len(msg))}
	w.WriteHeader(code)
	io.WriteString(w, msg)
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isIdempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return len(r.Header["Idempotency-Key"]) > 0 || len(r.Header["X-Idempotency-Key"]) > 0
}

// stickyUpstream returns the upstream named by the request's sticky
// cookie, or nil. It does not allocate.
func (h *HTTP) stickyUpstream(r *http.Request) *upstream {
	reg := h.reg.Load()
	for _, line := range r.Header["Cookie"] {
		for val, rest, ok := h1.CutCookie(line, h.cookieName); ok; val, rest, ok = h1.CutCookie(rest, h.cookieName) {
			if u := reg.byToken[val]; u != nil {
				return u
			}
		}
	}
	return nil
}

// headerHasToken reports whether a comma-separated header contains tok,
// case-insensitively.
func headerHasToken(vals []string, tok string) bool {
	for _, v := range vals {
		if h1.HasToken(v, tok) {
			return true
		}
	}
	return false
}
