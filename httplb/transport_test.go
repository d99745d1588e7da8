package httplb_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/httplb"
)

func newTransport(t testing.TB, cfg httplb.Config) *httplb.Transport {
	t.Helper()
	if cfg.Backoff.Base == 0 {
		cfg.Backoff.Base = time.Millisecond
	}
	tr, err := httplb.New(cfg)
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func get(t testing.TB, c *http.Client, ctx context.Context, url string, hdr ...string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestNewValidates(t *testing.T) {
	_, err := httplb.New(httplb.Config{})
	require.ErrorIs(t, err, httplb.ErrConfig)
	pool := newPool(t)
	_, err = httplb.New(httplb.Config{Pool: pool, Scheme: "ftp"})
	require.ErrorIs(t, err, httplb.ErrConfig)
	_, err = httplb.New(httplb.Config{Pool: pool, Circuit: circuit.Config{Member: circuit.Thresholds{MaxRequests: -1}}})
	require.ErrorIs(t, err, circuit.ErrConfig)
}

func TestRoundTripSpreadsAndRewrites(t *testing.T) {
	var hosts sync.Map
	var bs []*backend
	var addrs []netip.AddrPort
	for range 3 {
		b := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
			hosts.Store(r.Host, true)
			fmt.Fprint(w, r.URL.RequestURI())
		})
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	pool := newPool(t, addrs...)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool})}
	for range 30 {
		code, body, err := get(t, c, t.Context(), "http://fleet.example/a/b?c=d")
		require.NoError(t, err)
		require.Equal(t, 200, code)
		require.Equal(t, "/a/b?c=d", body)
	}
	for _, b := range bs {
		assert.InDelta(t, 10, b.hits.Load(), 2, "round robin over 3 members")
	}
	_, ok := hosts.Load("fleet.example")
	assert.True(t, ok, "the Host header is the request's, not the member's")
	for _, ep := range pool.Endpoints() {
		assert.InDelta(t, 10, ep.Requests(), 2)
		assert.Zero(t, ep.InFlight(), "Done was called for every request")
		lat, _ := ep.LatencyEWMA()
		assert.Positive(t, lat, "latency reported")
	}
}

func TestPickKey(t *testing.T) {
	var addrs []netip.AddrPort
	for range 4 {
		b := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.Context().Value(http.LocalAddrContextKey))
		})
		addrs = append(addrs, b.addr)
	}
	pool := newPoolWith(t, ringhash.Builder{}, addrs...)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool, Key: balancer.MustParseKey("header:X-User")})}
	for _, user := range []string{"ann", "bob", "cy", "dee", "eve"} {
		_, first, err := get(t, c, t.Context(), "http://fleet/", "X-User", user)
		require.NoError(t, err)
		for range 5 {
			_, again, err := get(t, c, t.Context(), "http://fleet/", "X-User", user)
			require.NoError(t, err)
			require.Equal(t, first, again, "user %s stays on one member", user)
		}
		// A key given through the context wins over the header.
		ctx := httplb.WithKey(t.Context(), "shard-7")
		_, byCtx, err := get(t, c, ctx, "http://fleet/", "X-User", user)
		require.NoError(t, err)
		_, byCtx2, err := get(t, c, httplb.WithKey(t.Context(), "shard-7"), "http://fleet/", "X-User", "someone else")
		require.NoError(t, err)
		require.Equal(t, byCtx, byCtx2)
	}
	// Without the header, picks spread (no client address on a client's
	// own requests).
	seen := map[string]bool{}
	for range 40 {
		_, who, err := get(t, c, t.Context(), "http://fleet/")
		require.NoError(t, err)
		seen[who] = true
	}
	assert.Greater(t, len(seen), 1)
}

// recorder is a balancer.Observer that records outcomes.
type recorder struct {
	mu   sync.Mutex
	errs []error
}

func (r *recorder) ObserveDone(_ *balancer.Endpoint, err error, _ time.Duration) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func TestOutcomesReachTheObserver(t *testing.T) {
	status := atomic.Int64{}
	status.Store(200)
	b := startBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(status.Load())) })
	pool := newPool(t, b.addr)
	rec := &recorder{}
	pool.SetObserver(rec)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool, Retries: -1})}
	for _, s := range []int{200, 404, 500, 503} {
		status.Store(int64(s))
		code, _, err := get(t, c, t.Context(), "http://fleet/")
		require.NoError(t, err)
		require.Equal(t, s, code)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.errs, 4)
	assert.NoError(t, rec.errs[0])
	assert.NoError(t, rec.errs[1], "a 4xx is the client's fault")
	assert.Error(t, rec.errs[2])
	assert.Error(t, rec.errs[3])
}

func TestRetriesOnAnotherMember(t *testing.T) {
	good := startBackend(t, ok)
	bad := startBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	dead := deadAddr(t)
	pool := newPool(t, dead, bad.addr, good.addr)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool})}
	for range 30 {
		code, _, err := get(t, c, t.Context(), "http://fleet/")
		require.NoError(t, err)
		require.Equal(t, 200, code)
	}
	assert.EqualValues(t, 30, good.hits.Load())
	assert.Positive(t, pool.Endpoint(dead).Failures())
	assert.Positive(t, pool.Endpoint(bad.addr).Failures())
}

func TestBodyReplay(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	good := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
	})
	dead := deadAddr(t)
	for _, tc := range []struct {
		name      string
		method    string
		body      func() io.Reader
		wantRetry bool
	}{
		{"PUT with GetBody", http.MethodPut, func() io.Reader { return strings.NewReader("payload") }, true},
		{"PUT without GetBody", http.MethodPut, func() io.Reader { return io.MultiReader(strings.NewReader("payload")) }, false},
		{"POST with GetBody", http.MethodPost, func() io.Reader { return bytes.NewBufferString("payload") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The dead member comes first: "first" picking would be
			// simpler, but round robin from a known start is enough:
			// try until the first attempt hit the dead member.
			pool := newPoolWith(t, balancer.BuilderFunc(func(ready []balancer.Weighted) balancer.Picker {
				var n atomic.Int64
				return balancer.PickerFunc(func(balancer.PickInfo) (*balancer.Endpoint, error) {
					return ready[n.Add(1)%int64(len(ready))].Endpoint, nil
				})
			}), good.addr, dead) // pick 1 is dead, pick 2 good
			c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool})}
			mu.Lock()
			bodies = nil
			mu.Unlock()
			req, err := http.NewRequestWithContext(t.Context(), tc.method, "http://fleet/", tc.body())
			require.NoError(t, err)
			resp, err := c.Do(req)
			if !tc.wantRetry {
				require.Error(t, err)
				assert.Equal(t, uint64(1), pool.Endpoint(dead).Requests())
				assert.Zero(t, pool.Endpoint(good.addr).Requests())
				return
			}
			require.NoError(t, err)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			assert.Equal(t, []string{"payload"}, bodies, "the body was sent again in full")
		})
	}
}

func TestCircuitOpen(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	b := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	})
	pool := newPool(t, b.addr)
	tr := newTransport(t, httplb.Config{Pool: pool, Circuit: circuit.Config{Member: circuit.Thresholds{MaxRequests: 1}}})
	c := &http.Client{Transport: tr}
	done := make(chan error, 1)
	go func() {
		_, _, err := get(t, c, context.Background(), "http://fleet/")
		done <- err
	}()
	<-arrived
	_, _, err := get(t, c, t.Context(), "http://fleet/")
	require.ErrorIs(t, err, circuit.ErrMaxRequests)
	require.ErrorIs(t, err, circuit.ErrOpen)
	assert.Equal(t, uint64(1), tr.Circuit().Member(b.addr).Overflows(circuit.Requests))
	close(release)
	require.NoError(t, <-done)
	_, _, err = get(t, c, t.Context(), "http://fleet/")
	require.NoError(t, err, "closed again once the request ended")
}

// TestRetryRefusedByBreaker: with one retry allowed in flight, a second
// request whose first attempt fails is not retried, and its error says why.
func TestRetryRefusedByBreaker(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	hold := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	})
	dead := deadAddr(t)
	// Picks alternate dead, hold, dead, hold...
	pool := newPoolWith(t, balancer.BuilderFunc(func(ready []balancer.Weighted) balancer.Picker {
		var n atomic.Int64
		return balancer.PickerFunc(func(balancer.PickInfo) (*balancer.Endpoint, error) {
			return ready[(n.Add(1)+1)%2].Endpoint, nil
		})
	}), dead, hold.addr)
	tr := newTransport(t, httplb.Config{Pool: pool, Circuit: circuit.Config{Pool: circuit.Thresholds{MaxRetries: 1}}})
	c := &http.Client{Transport: tr}
	done := make(chan error, 1)
	go func() {
		_, _, err := get(t, c, context.Background(), "http://fleet/")
		done <- err
	}()
	<-arrived // the first request's retry holds the one retry slot
	_, _, err := get(t, c, t.Context(), "http://fleet/")
	require.ErrorIs(t, err, circuit.ErrMaxRetries)
	assert.Contains(t, err.Error(), "connection refused")
	assert.Equal(t, uint64(1), tr.Circuit().Pool().Overflows(circuit.Retries))
	close(release)
	require.NoError(t, <-done)
}

func TestBackoffStopsAtDeadline(t *testing.T) {
	dead := deadAddr(t)
	pool := newPool(t, dead)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool, Backoff: circuit.Backoff{Base: time.Hour}})}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, _, err := get(t, c, ctx, "http://fleet/")
	require.Error(t, err)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "no retry was attempted: the backoff cannot fit")
	assert.Equal(t, uint64(1), pool.Endpoint(dead).Requests())
}

func TestNoBackend(t *testing.T) {
	pool := newPool(t)
	c := &http.Client{Transport: newTransport(t, httplb.Config{Pool: pool})}
	_, _, err := get(t, c, t.Context(), "http://fleet/")
	require.ErrorIs(t, err, balancer.ErrNoBackend)
}

// TestKilledBackendUnderLoad: 200 concurrent clients, 3 members, one
// killed (listener and connections closed) a third of the way through:
// no idempotent request fails.
func TestKilledBackendUnderLoad(t *testing.T) {
	const clients, perClient = 200, 15
	var bs []*backend
	var addrs []netip.AddrPort
	for range 3 {
		b := startBackend(t, ok)
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	pool := newPool(t, addrs...)
	tr := newTransport(t, httplb.Config{Pool: pool})
	c := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	var completed, failed atomic.Int64
	kill := make(chan struct{})
	var once sync.Once
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range perClient {
				code, _, err := get(t, c, ctx, "http://fleet/")
				if err != nil || code != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint(code, err))
				}
				if completed.Add(1) == clients*perClient/3 {
					once.Do(func() { close(kill) })
				}
			}
		})
	}
	<-kill
	require.NoError(t, bs[0].srv.Close())
	wg.Wait()
	require.EqualValues(t, clients*perClient, completed.Load())
	require.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
	assert.Positive(t, pool.Endpoint(bs[0].addr).Failures(), "the killed member was tried after the kill")
}

// TestRetryBudgetCapsRetries: every first attempt fails while 200 requests
// are in flight; with a 20% budget, at most 20% of them are retried.
func TestRetryBudgetCapsRetries(t *testing.T) {
	const clients, percent = 200, 20
	gate := make(chan struct{})
	var seen sync.Map
	var retriesArrived atomic.Int64
	// events gets one value per client before the gate opens: its retry
	// reached a backend, or it returned (its retry was refused).
	events := make(chan struct{}, 2*clients)
	h := func(w http.ResponseWriter, r *http.Request) {
		if _, again := seen.LoadOrStore(r.Header.Get("X-Client"), true); !again {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		retriesArrived.Add(1)
		events <- struct{}{}
		<-gate
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	var bs []*backend
	var addrs []netip.AddrPort
	for range 3 {
		b := startBackend(t, h)
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	pool := newPool(t, addrs...)
	tr := newTransport(t, httplb.Config{
		Pool:    pool,
		Retries: 1,
		Circuit: circuit.Config{Pool: circuit.Thresholds{RetryBudget: circuit.RetryBudget{Percent: percent}}},
	})
	c := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// Every client keeps its answer open until all have one, so the
	// requests in flight stay at 200 while retries are decided.
	var returned sync.WaitGroup
	returned.Add(clients)
	allReturned := make(chan struct{})
	var codes [clients]int
	var errs [clients]error
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://fleet/", nil)
			req.Header.Set("X-Client", fmt.Sprint(i))
			resp, err := c.Do(req)
			errs[i] = err
			if err == nil {
				codes[i] = resp.StatusCode
				defer resp.Body.Close()
			}
			events <- struct{}{}
			returned.Done()
			<-allReturned
		})
	}
	// Denied clients return at once; retried ones wait at the gate, so
	// they cannot return before it opens.
	for range clients {
		<-events
	}
	retried := retriesArrived.Load()
	close(gate)
	returned.Wait()
	close(allReturned)
	wg.Wait()

	t.Logf("retries sent: %d of %d failed requests (budget %d%%, overflow %d)", retried, clients, percent, tr.Circuit().Pool().Overflows(circuit.Retries))
	assert.LessOrEqual(t, retried, int64(clients*percent/100), "the budget caps retries in flight at 20%% of 200 requests")
	assert.GreaterOrEqual(t, retried, int64(clients*percent/100-5), "and lets about that many through")
	assert.EqualValues(t, clients, uint64(retried)+tr.Circuit().Pool().Overflows(circuit.Retries))
	var hits int64
	for _, b := range bs {
		hits += b.hits.Load()
	}
	assert.Equal(t, clients+retried, hits, "the backends saw each request once plus the retries")
	for i := range clients {
		require.NoError(t, errs[i])
		assert.Equal(t, 503, codes[i], "a request whose retry was refused gets the last answer")
	}
}

func TestReverseProxy(t *testing.T) {
	var bs []*backend
	var addrs []netip.AddrPort
	for range 3 {
		b := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.Context().Value(http.LocalAddrContextKey), " ", r.Header.Get("X-Forwarded-For"))
		})
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	pool := newPoolWith(t, ringhash.Builder{}, addrs...)
	tr := newTransport(t, httplb.Config{Pool: pool, Key: balancer.MustParseKey("client")})
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetXForwarded() },
		Transport: tr,
	}
	front := httptest.NewServer(rp)
	defer front.Close()
	c := front.Client()
	_, first, err := get(t, c, t.Context(), front.URL+"/x")
	require.NoError(t, err)
	assert.Contains(t, first, "127.0.0.1")
	for range 10 {
		_, again, err := get(t, c, t.Context(), front.URL+"/x")
		require.NoError(t, err)
		require.Equal(t, first, again, "one client stays on one member (key: client)")
	}
	// Kill that member: the proxy's GETs go elsewhere without an error.
	for _, b := range bs {
		if strings.HasPrefix(first, b.addr.String()) {
			require.NoError(t, b.srv.Close())
		}
	}
	for range 10 {
		code, moved, err := get(t, c, t.Context(), front.URL+"/x")
		require.NoError(t, err)
		require.Equal(t, 200, code)
		require.NotEqual(t, first, moved)
	}
	c.CloseIdleConnections()
}

// TestPendingAndConnectionThresholds: a member capped at one connection
// queues one request as pending and refuses the next; a pool capped at one
// connection refuses to open a second one to another member.
func TestPendingAndConnectionThresholds(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	h := func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}
	t.Run("member", func(t *testing.T) {
		b := startBackend(t, h)
		tr := newTransport(t, httplb.Config{Pool: newPool(t, b.addr), Circuit: circuit.Config{
			Member: circuit.Thresholds{MaxConnections: 1, MaxPendingRequests: 1},
		}})
		c := &http.Client{Transport: tr}
		done := make(chan error, 2)
		for range 2 {
			go func() {
				_, _, err := get(t, c, context.Background(), "http://fleet/")
				done <- err
			}()
		}
		<-arrived // one request on the one connection...
		m := tr.Circuit().Member(b.addr)
		require.Eventually(t, func() bool { return m.Active(circuit.PendingRequests) == 1 }, 10*time.Second, time.Millisecond,
			"...and one waiting for it")
		assert.EqualValues(t, 1, m.Active(circuit.Connections))
		_, _, err := get(t, c, t.Context(), "http://fleet/")
		require.ErrorIs(t, err, circuit.ErrMaxPendingRequests)
		release <- struct{}{}
		<-arrived // the pending one got the connection
		release <- struct{}{}
		require.NoError(t, <-done)
		require.NoError(t, <-done)
		assert.Zero(t, m.Active(circuit.PendingRequests))
	})
	t.Run("pool", func(t *testing.T) {
		a, b := startBackend(t, h), startBackend(t, h)
		tr := newTransport(t, httplb.Config{Pool: newPool(t, a.addr, b.addr), Circuit: circuit.Config{
			Pool: circuit.Thresholds{MaxConnections: 1},
		}})
		c := &http.Client{Transport: tr}
		done := make(chan error, 1)
		go func() {
			_, _, err := get(t, c, context.Background(), "http://fleet/")
			done <- err
		}()
		<-arrived
		_, _, err := get(t, c, t.Context(), "http://fleet/")
		require.ErrorIs(t, err, circuit.ErrMaxConnections)
		assert.Positive(t, tr.Circuit().Pool().Overflows(circuit.Connections))
		release <- struct{}{}
		require.NoError(t, <-done)
	})
}

// TestRemovedMemberConnectionsClosed: once a member leaves the pool, the
// next request closes the idle connections the Transport kept to it.
func TestRemovedMemberConnectionsClosed(t *testing.T) {
	closed := make(chan struct{}, 8)
	gone := startBackendWith(t, ok, func(s *http.Server) {
		s.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				closed <- struct{}{}
			}
		}
	})
	stay := startBackend(t, ok)
	pool := newPool(t, gone.addr, stay.addr)
	tr := newTransport(t, httplb.Config{Pool: pool})
	c := &http.Client{Transport: tr}
	for range 4 {
		_, _, err := get(t, c, t.Context(), "http://fleet/")
		require.NoError(t, err)
	}
	require.Positive(t, gone.hits.Load())
	require.True(t, pool.Remove(gone.addr))
	_, _, err := get(t, c, t.Context(), "http://fleet/")
	require.NoError(t, err)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the removed member's idle connection stayed open")
	}
}
