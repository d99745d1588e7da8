package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/first"
)

// TestHTTPHooks: OnAttempt names the backend of every attempt (a retry
// included), RewriteRequest sets the upstream Host from the member's
// metadata, and ModifyResponse adds a field, behind both front-ends.
func TestHTTPHooks(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe frontEnd) { testHTTPHooks(t, fe, false) })
	t.Run("h2c", func(t *testing.T) { testHTTPHooks(t, netHTTP, true) })
}

func testHTTPHooks(t *testing.T, fe frontEnd, h2c bool) {
	// Nothing listens on port 1 of 127.0.0.254: connecting is refused at
	// once. (A closed test backend's port could be taken by the next
	// listener, the proxy's own included.)
	dead := &testBackend{addr: netip.MustParseAddrPort("127.0.0.254:1")}
	live := startBackend(t, "live")
	if h2c {
		live = startH2CBackend(t, "live")
	}
	// "first" picks the first ready member: the dead one, then the retry
	// goes to the live one.
	pool := balancer.MustNew(balancer.Config{Builder: first.Builder{}})
	require.NoError(t, pool.Add(balancer.Backend{Addr: dead.addr}))
	require.NoError(t, pool.Add(balancer.Backend{Addr: live.addr, Meta: map[string]string{"host": "live.internal"}}))
	var (
		mu       sync.Mutex
		attempts []Attempt
	)
	p := startProxyFE(t, fe, HTTPConfig{
		Pool: pool,
		H2C:  h2c,
		OnAttempt: func(a *Attempt) {
			mu.Lock()
			defer mu.Unlock()
			attempts = append(attempts, *a)
		},
		RewriteRequest: func(r *http.Request, ep *balancer.Endpoint) {
			if h := ep.Meta("host"); h != "" {
				r.Host = h
			}
		},
		ModifyResponse: func(resp *ResponseHead) {
			resp.Header.Set("X-Served-By", resp.Backend.Addr().String())
			if resp.Request.URL.Query().Get("teapot") != "" {
				resp.Status = http.StatusTeapot
			}
		},
	})
	c := testClient(t, 1)
	code, body, hdr := get(t, c, p.url+"/headers")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "Host: live.internal\n", "the rewritten Host reached the backend")
	assert.Contains(t, body, "X-Forwarded-Host: "+p.addr+"\n", "X-Forwarded-Host names what the client asked for")
	assert.Equal(t, live.addr.String(), hdr.Get("X-Served-By"))

	mu.Lock()
	require.Len(t, attempts, 2)
	first, second := attempts[0], attempts[1]
	mu.Unlock()
	assert.Equal(t, dead.addr, first.Backend.Addr())
	assert.Equal(t, 1, first.Try)
	assert.Error(t, first.Err)
	assert.True(t, first.Retried)
	assert.Zero(t, first.Status)
	assert.Equal(t, live.addr, second.Backend.Addr())
	assert.Equal(t, 2, second.Try)
	assert.NoError(t, second.Err)
	assert.False(t, second.Retried)
	assert.Equal(t, http.StatusOK, second.Status)
	assert.Equal(t, int64(len(body)), second.Bytes)
	assert.Positive(t, second.Duration)

	code, _, _ = get(t, c, p.url+"/?teapot=1")
	assert.Equal(t, http.StatusTeapot, code, "the status can be changed")
	code, _, _ = get(t, c, p.url+"/status/503")
	assert.Equal(t, 503, code)
	mu.Lock()
	last := attempts[len(attempts)-1]
	mu.Unlock()
	assert.Equal(t, 503, last.Status)
	require.Error(t, last.Err)
	assert.True(t, strings.Contains(last.Err.Error(), "503"))
}
