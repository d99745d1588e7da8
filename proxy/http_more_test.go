package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// recorder is a balancer.Observer that keeps every outcome reported
// through Endpoint.Done.
type recorder struct {
	mu  sync.Mutex
	got map[netip.AddrPort][]error
}

func (r *recorder) ObserveDone(ep *balancer.Endpoint, err error, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[netip.AddrPort][]error{}
	}
	r.got[ep.Addr()] = append(r.got[ep.Addr()], err)
}

func (r *recorder) outcomes(a netip.AddrPort) (ok, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.got[a] {
		if err != nil {
			failed++
		} else {
			ok++
		}
	}
	return ok, failed
}

func TestHTTPPassiveHealth(t *testing.T) { forEachFrontEnd(t, testHTTPPassiveHealth) }

func testHTTPPassiveHealth(t *testing.T, fe frontEnd) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	rec := &recorder{}
	p := startProxyFE(t, fe, HTTPConfig{}, a, b)
	p.pool.SetObserver(rec) // as a health.Checker following the pool does
	c := testClient(t, 2)
	for range 4 {
		code, _, _ := get(t, c, p.url+"/")
		require.Equal(t, 200, code)
	}
	okA, failA := rec.outcomes(a.addr)
	okB, failB := rec.outcomes(b.addr)
	assert.Equal(t, 4, okA+okB)
	assert.Zero(t, failA+failB)
	nsA, _ := p.pool.Endpoint(a.addr).LatencyEWMA()
	nsB, _ := p.pool.Endpoint(b.addr).LatencyEWMA()
	assert.Positive(t, nsA+nsB, "latency to the header feeds the EWMA")

	// 5xx is a failure and is passed on (no RetryStatuses).
	for range 2 {
		code, _, _ := get(t, c, p.url+"/status/500")
		assert.Equal(t, 500, code)
	}
	_, failA = rec.outcomes(a.addr)
	_, failB = rec.outcomes(b.addr)
	assert.Equal(t, 2, failA+failB)

	// A dead backend: connect errors are failures, the client never sees them.
	b.srv.Close()
	for range 4 {
		code, body, _ := get(t, c, p.url+"/")
		assert.Equal(t, 200, code)
		assert.Equal(t, "a", body)
	}
	_, failB2 := rec.outcomes(b.addr)
	assert.Greater(t, failB2, failB)
	for _, ep := range p.pool.Endpoints() {
		assert.Zero(t, ep.InFlight(), "Start and Done are balanced")
	}
}

func TestHTTPClientHTTP2(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxy(t, HTTPConfig{}, b)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	resp, err := c.Get(p.url + "/headers")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, 2, resp.ProtoMajor, "the client spoke HTTP/2 to the proxy")
	assert.Contains(t, string(body), "X-Forwarded-For: 127.0.0.1\n")

	resp, err = c.Get(p.url + "/download/100000")
	require.NoError(t, err)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, int64(100000), n)
	assert.NotEmpty(t, resp.Trailer.Get("X-Checksum"), "trailers reach HTTP/2 clients")
}

func TestHTTPSUpstream(t *testing.T) {
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tls ok")
	}))
	backend.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	backend.Listener = ln
	backend.StartTLS()
	defer backend.Close()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: addr}}))
	cfg := backend.Client().Transport.(*http.Transport).TLSClientConfig
	p := startProxy(t, HTTPConfig{Pool: pool, TLS: &tls.Config{RootCAs: cfg.RootCAs, ServerName: "example.com"}})
	code, body, _ := get(t, testClient(t, 1), p.url+"/")
	assert.Equal(t, 200, code)
	assert.Equal(t, "tls ok", body)
}

func TestNewHTTPValidation(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	tests := []struct {
		name string
		cfg  HTTPConfig
	}{
		{"no pool", HTTPConfig{}},
		{"negative", HTTPConfig{Pool: pool, MaxConns: -1}},
		{"bad status", HTTPConfig{Pool: pool, RetryStatuses: []int{42}}},
		{"short key", HTTPConfig{Pool: pool, StickyCookie: "s", CookieKey: []byte("short")}},
		{"bad cookie name", HTTPConfig{Pool: pool, StickyCookie: "a b"}},
		{"bad via", HTTPConfig{Pool: pool, Via: "a b"}},
		{"bad prefix", HTTPConfig{Pool: pool, TrustedProxies: []netip.Prefix{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := NewHTTP(tt.cfg)
			assert.Error(t, err)
			assert.Nil(t, h)
		})
	}
}
