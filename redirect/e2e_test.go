package redirect

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/health"
)

// redirBackend is a real HTTP server on loopback that names itself and
// echoes the method and body it received.
type redirBackend struct {
	name string
	srv  *httptest.Server
	addr netip.AddrPort
}

func redirStartBackend(t *testing.T, name string) *redirBackend {
	t.Helper()
	b := &redirBackend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", name)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	}))
	t.Cleanup(b.srv.Close)
	b.addr = netip.MustParseAddrPort(b.srv.Listener.Addr().String())
	return b
}

// redirDispatcher serves h on loopback and returns its base URL.
func redirDispatcher(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func redirClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// redirGet follows the redirect for path and returns the name of the
// backend that answered, or an error.
func redirGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get("X-Backend"), nil
}

// redirCheck drives h's pool from a real health.Checker with a TCP probe
// every interval, failing a backend on its first failed probe. It stops
// when the test ends.
func redirCheck(t *testing.T, h *Handler, interval time.Duration) {
	t.Helper()
	chk, err := health.New(health.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, chk.Follow(h.Pool(), health.Template{
		Probe: health.TCP{}, Interval: interval, Timeout: 5 * time.Second,
		Fall: 1, Rise: 1, Initial: health.Healthy,
	}))
	t.Cleanup(func() { chk.Close() })
}

func TestEndToEndWeights(t *testing.T) {
	bs := []*redirBackend{redirStartBackend(t, "a"), redirStartBackend(t, "b"), redirStartBackend(t, "c")}
	var targets []tgt
	for i, b := range bs {
		targets = append(targets, tgt{URL: b.srv.URL, Weight: uint32(i + 1)})
	}
	h := redirNew(t, Config{Pool: redirPool(t, targets)})
	url := redirDispatcher(t, h) + "/obj?x=1"
	c := redirClient(t)

	const n = 1200
	counts := map[string]int{}
	for range n {
		name, err := redirGet(c, url)
		require.NoError(t, err)
		counts[name]++
	}
	// Weights 1:2:3 → 200, 400, 600; a binomial spread is about 15.
	for i, name := range []string{"a", "b", "c"} {
		want := n * (i + 1) / 6
		assert.InDelta(t, want, counts[name], 80, "backend %s: %v", name, counts)
	}
}

func TestEndToEndPostKeepsBody(t *testing.T) {
	b := redirStartBackend(t, "a")
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{{URL: b.srv.URL + "/base/"}})})
	url := redirDispatcher(t, h)
	c := redirClient(t)
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		req, err := http.NewRequest(method, url+"/upload?id=7", bytes.NewReader([]byte("payload-"+method)))
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, method+" /base/upload?id=7 payload-"+method, string(body))
	}
}

func TestEndToEndBackendKilled(t *testing.T) {
	bs := []*redirBackend{redirStartBackend(t, "a"), redirStartBackend(t, "b"), redirStartBackend(t, "c")}
	var targets []tgt
	for _, b := range bs {
		targets = append(targets, tgt{URL: b.srv.URL})
	}
	h := redirNew(t, Config{Pool: redirPool(t, targets)})

	// Record every redirect answered under a snapshot that no longer has
	// the killed backend.
	var mu sync.Mutex
	var afterEject []string
	url := redirDispatcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gone := !inReady(h.Pool().Snapshot(), bs[1].addr)
		h.ServeHTTP(w, r)
		if gone {
			mu.Lock()
			afterEject = append(afterEject, w.Header().Get("Location"))
			mu.Unlock()
		}
	})) + "/x"

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	redirCheck(t, h, 50*time.Millisecond)
	ejected := make(chan struct{})
	c := redirClient(t)

	const n, workers = 300, 4
	var wg sync.WaitGroup
	var failed, retried int
	var once sync.Once
	for w := range workers {
		wg.Go(func() {
			for i := range n / workers {
				if w == 0 && i == n/workers/3 {
					once.Do(func() {
						bs[1].srv.CloseClientConnections()
						bs[1].srv.Listener.Close()
						go func() {
							// The ejection: the first snapshot without b.
							for inReady(h.Pool().Snapshot(), bs[1].addr) {
								select {
								case <-h.Pool().Snapshot().Changed():
								case <-ctx.Done():
									return
								}
							}
							close(ejected)
						}()
					})
				}
				// A client retries through the dispatcher with a short
				// backoff, as browsers and download tools do.
				ok := false
				for range 200 {
					if _, err := redirGet(c, url); err == nil {
						ok = true
						break
					}
					mu.Lock()
					retried++
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
				}
				if !ok {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-ejected:
	case <-time.After(30 * time.Second):
		t.Fatal("the killed backend was never ejected")
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Zero(t, failed, "every request reached a live backend (%d retries)", retried)
	require.NotEmpty(t, afterEject)
	for _, loc := range afterEject {
		require.False(t, strings.HasPrefix(loc, bs[1].srv.URL+"/"), "no redirect names the dead backend after ejection: %s", loc)
	}
}

func TestEndToEndCookieAffinity(t *testing.T) {
	bs := map[string]*redirBackend{}
	var targets []tgt
	for _, name := range []string{"a", "b", "c"} {
		b := redirStartBackend(t, name)
		bs[name] = b
		targets = append(targets, tgt{URL: b.srv.URL})
	}
	h := redirNew(t, Config{Pool: redirPool(t, targets), StickyCookie: redirCookie})
	url := redirDispatcher(t, h) + "/app"
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	c := redirClient(t)
	c.Jar = jar

	first, err := redirGet(c, url)
	require.NoError(t, err)
	for range 20 {
		name, err := redirGet(c, url)
		require.NoError(t, err)
		require.Equal(t, first, name, "affinity holds while the backend is healthy")
	}

	bs[first].srv.Close()
	h.Pool().SetHealthy(bs[first].addr, false)
	moved, err := redirGet(c, url)
	require.NoError(t, err)
	assert.NotEqual(t, first, moved)
	for range 20 {
		name, err := redirGet(c, url)
		require.NoError(t, err)
		require.Equal(t, moved, name, "the new cookie sticks to the new backend")
	}

	other := redirClient(t) // no jar: no affinity
	seen := map[string]bool{}
	for range 20 {
		name, err := redirGet(other, url)
		require.NoError(t, err)
		seen[name] = true
	}
	assert.Len(t, seen, 2)
}

func TestEndToEndZones(t *testing.T) {
	eu, us1, us2 := redirStartBackend(t, "eu"), redirStartBackend(t, "us1"), redirStartBackend(t, "us2")
	h := redirNew(t, Config{
		Pool: redirPool(t, []tgt{
			{URL: eu.srv.URL, Zone: "eu"}, {URL: us1.srv.URL, Zone: "us"}, {URL: us2.srv.URL, Zone: "us"},
		}),
		Zones: []ZoneRule{
			{Prefix: netip.MustParsePrefix("198.18.0.0/24"), Zone: "eu"},
			{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Zone: "us"},
		},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	})
	url := redirDispatcher(t, h) + "/file"
	c := redirClient(t)
	get := func(client string) string {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		require.NoError(t, err)
		req.Header.Set("X-Forwarded-For", "203.0.113.66, "+client)
		resp, err := c.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Header.Get("X-Backend")
	}
	for range 10 {
		assert.Equal(t, "eu", get("198.18.0.7"))
		assert.Contains(t, []string{"us1", "us2"}, get("198.19.3.4"))
	}
	h.Pool().SetHealthy(eu.addr, false)
	for range 10 {
		assert.Contains(t, []string{"us1", "us2"}, get("198.18.0.7"), "fallback to any zone")
	}
}

// TestRawHostileRequests sends request lines a browser would never send
// straight over TCP, past every client-side normalisation.
func TestRawHostileRequests(t *testing.T) {
	b := redirStartBackend(t, "a")
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{{URL: b.srv.URL + "/m"}})})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	base := b.srv.URL + "/m/"

	tests := []struct {
		name, request string
		code          int
		location      string // "" checks only the safety properties
	}{
		{"absolute form", "GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n", 302, base + "x?y=1"},
		{"absolute form https", "GET https://evil.example HTTP/1.1\r\nHost: x\r\n\r\n", 302, base},
		{"protocol relative", "GET //evil.example/a HTTP/1.1\r\nHost: x\r\n\r\n", 302, base + "evil.example/a"},
		{"encoded crlf", "GET /%0d%0aSet-Cookie:x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 302, base + "%0d%0aSet-Cookie:x=1"},
		{"encoded crlf query", "GET /?a=%0D%0ALocation:x HTTP/1.1\r\nHost: x\r\n\r\n", 302, base + "?a=%0D%0ALocation:x"},
		{"forwarded host ignored", "GET /p HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\nForwarded: host=evil.example\r\n\r\n", 302, base + "p"},
		{"http/1.0 without host", "GET /p HTTP/1.0\r\n\r\n", 302, base + "p"},
		{"bare cr in target", "GET /a\rSet-Cookie:x HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""},
		{"dot segments", "GET /m/../../admin HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""},
		{"huge", "GET /" + strings.Repeat("%41", 20000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 10*time.Second)
			require.NoError(t, err)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = io.WriteString(conn, tt.request)
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.code, resp.StatusCode)
			assert.Empty(t, resp.Header.Values("Set-Cookie"))
			loc := resp.Header.Get("Location")
			if tt.code != 302 {
				assert.Empty(t, loc)
				return
			}
			assert.Equal(t, tt.location, loc)
			assert.True(t, strings.HasPrefix(loc, base), loc)
		})
	}
}
