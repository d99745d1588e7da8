package proxy

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHTTPDistribution(t *testing.T) { forEachFrontEnd(t, testHTTPDistribution) }

func testHTTPDistribution(t *testing.T, fe frontEnd) {
	bs := []*testBackend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	p := startProxyFE(t, fe, HTTPConfig{}, bs...)
	c := testClient(t, 8)
	seen := map[string]int{}
	for range 300 {
		code, body, hdr := get(t, c, p.url+"/")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, body, hdr.Get("X-Backend"))
		seen[body]++
	}
	// Round robin with sharded counters: even up to a few requests.
	require.Len(t, seen, 3)
	for name, n := range seen {
		assert.InDelta(t, 100, n, 10, name)
	}
	for _, b := range bs {
		assert.Positive(t, p.h.IdleConns(b.addr), "keep-alive connections are pooled")
	}
}

func TestHTTPRetryHidesKilledBackend(t *testing.T) {
	forEachFrontEnd(t, testHTTPRetryHidesKilledBackend)
}

func testHTTPRetryHidesKilledBackend(t *testing.T, fe frontEnd) {
	bs := []*testBackend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	p := startProxyFE(t, fe, HTTPConfig{}, bs...)
	c := testClient(t, 16)

	const workers, perWorker = 8, 60
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	killed := make(chan struct{})
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				if w == 0 && i == perWorker/3 {
					bs[1].srv.Close() // kill b: listener and connections
					close(killed)
				}
				resp, err := c.Get(p.url + "/")
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					mu.Lock()
					failures = append(failures, resp.Status)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	<-killed
	assert.Empty(t, failures, "idempotent GETs never fail while a backend dies")
	ep := p.pool.Endpoint(bs[1].addr)
	assert.Positive(t, ep.Failures(), "the dead backend's failures were recorded")
	assert.Zero(t, ep.InFlight())
}

func TestHTTPNoBackend(t *testing.T) { forEachFrontEnd(t, testHTTPNoBackend) }

func testHTTPNoBackend(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{}, b)
	p.pool.SetHealthy(b.addr, false)
	code, body, _ := get(t, testClient(t, 1), p.url+"/")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.True(t, strings.HasPrefix(body, "proxy: no backend"), body)
}
