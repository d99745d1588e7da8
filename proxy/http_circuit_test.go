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
// to a share of the requests in flight: with 60 requests in flight and a
// 10 % budget, at most max(3, 6) retries run at once, where MaxTries 3
// alone would send every request three times.
func TestHTTPRetryBudget(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	for range 3 {
		be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			<-release
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		defer be.Close()
		require.NoError(t, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(be.Listener.Addr().String())}))
	}
	h, err := NewHTTP(HTTPConfig{
		Pool: pool, MaxTries: 3, RetryStatuses: []int{503},
		Circuit: circuit.Config{Pool: circuit.Thresholds{RetryBudget: circuit.RetryBudget{Percent: 10, MinConcurrency: 3}}},
	})
	require.NoError(t, err)
	defer h.Close()
	front := httptest.NewServer(h)
	defer front.Close()

	const n = 60
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Go(func() {
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
	// Every first attempt is in flight; then let the backends answer.
	deadline := time.Now().Add(10 * time.Second)
	for hits.Load() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	require.EqualValues(t, n, hits.Load(), "all first attempts in flight")
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		assert.Equal(t, http.StatusServiceUnavailable, c)
	}
	retries := hits.Load() - n
	t.Logf("%d requests, %d retries sent, %d refused by the budget", n, retries, h.Circuit().Pool().Stats().Overflow[circuit.Retries])
	assert.LessOrEqual(t, retries, int64(2*n/10+6), "retries are bounded by the budget, not by MaxTries (which would allow %d)", 2*n)
	assert.Positive(t, h.Circuit().Pool().Stats().Overflow[circuit.Retries], "the budget refused retries")
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
