package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/circuit"
)

// In an outage where every backend fails, the retry budget keeps retries
// to a share of the requests in flight. The budget limits retries in
// flight, so the test holds every admitted retry until each request has
// either been refused a retry or has one in flight: with 60 requests in
// flight and a 10% budget (at least 3), 3 to 6 retries are admitted and
// the rest refused, where MaxTries alone would retry all 60.
func TestHTTPRetryBudget(t *testing.T) {
	const n = 60
	var hits atomic.Int64
	failFirst := make(chan struct{}) // the first attempts answer 503
	releaseRetries := make(chan struct{})
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	for range 3 {
		be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) <= n {
				<-failFirst
			} else {
				<-releaseRetries
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		defer be.Close()
		require.NoError(t, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(be.Listener.Addr().String())}))
	}
	h, err := NewHTTP(HTTPConfig{
		Pool: pool, MaxTries: 2, RetryStatuses: []int{503},
		Circuit: circuit.Config{Pool: circuit.Thresholds{RetryBudget: circuit.RetryBudget{Percent: 10, MinConcurrency: 3}}},
	})
	require.NoError(t, err)
	defer h.Close()
	front := httptest.NewServer(h)
	defer front.Close()

	var wg sync.WaitGroup
	codes := make(chan int, n)
	var finished atomic.Int64
	for range n {
		wg.Go(func() {
			defer finished.Add(1)
			resp, err := front.Client().Get(front.URL)
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		})
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("every first attempt in flight", func() bool { return hits.Load() == n })
	close(failFirst)
	// Each request now either holds an admitted retry or was refused one.
	wait("every retry admitted or refused", func() bool { return (hits.Load()-n)+finished.Load() == n })
	retries := hits.Load() - n
	refused := h.Circuit().Pool().Stats().Overflow[circuit.Retries]
	close(releaseRetries)
	wg.Wait()
	close(codes)
	for c := range codes {
		assert.Equal(t, http.StatusServiceUnavailable, c)
	}
	t.Logf("%d requests, %d retries admitted, %d refused by the budget", n, retries, refused)
	assert.GreaterOrEqual(t, retries, int64(3), "the budget's minimum concurrency is admitted")
	assert.LessOrEqual(t, retries, int64(6), "at most 10%% of the %d requests in flight retry at once", n)
	assert.EqualValues(t, n-retries, refused, "every other retry was refused and counted")
}

// A request over a circuit threshold is answered 503 at once, and the
// error wraps circuit.ErrOpen.
func TestHTTPCircuitMaxRequests(t *testing.T) {
	block := make(chan struct{})
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer be.Close()
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(be.Listener.Addr().String())}))
	h, err := NewHTTP(HTTPConfig{Pool: pool, Circuit: circuit.Config{Member: circuit.Thresholds{MaxRequests: 1}}})
	require.NoError(t, err)
	defer h.Close()
	front := httptest.NewServer(h)
	defer front.Close()
	first := make(chan struct{})
	go func() {
		defer close(first)
		resp, err := front.Client().Get(front.URL)
		if err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for h.Circuit().Pool().Stats().Active[circuit.Requests] == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Contains(t, string(body), "circuit open")
	close(block)
	<-first
	assert.EqualValues(t, 1, h.Circuit().Member(pool.Endpoints()[0].Addr()).Overflows(circuit.Requests))
}
