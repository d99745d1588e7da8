package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// TestHTTPRuntimeChange: members are added to and removed from the pool
// while a client keeps one connection open, behind both front-ends; the
// connection keeps working and the next request sees the change.
func TestHTTPRuntimeChange(t *testing.T) { forEachFrontEnd(t, testHTTPRuntimeChange) }

func testHTTPRuntimeChange(t *testing.T, fe frontEnd) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Add(balancer.Backend{Addr: a.addr}))
	p := startProxyFE(t, fe, HTTPConfig{Pool: pool})

	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	ask := func(step string) string {
		_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err, step)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err, "%s: the client connection survived", step)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err, step)
		resp.Body.Close()
		require.False(t, resp.Close, step)
		return string(body)
	}
	assert.Equal(t, "a", ask("initial"))

	require.NoError(t, pool.Add(balancer.Backend{Addr: b.addr}))
	seen := map[string]bool{}
	for range 4 {
		seen[ask("member added")] = true
	}
	assert.Equal(t, map[string]bool{"a": true, "b": true}, seen, "the new member takes requests")

	require.True(t, pool.Remove(a.addr))
	for range 3 {
		assert.Equal(t, "b", ask("member removed"))
	}

	// A change of metadata alone (what a front-end reads per member)
	// publishes a snapshot; the connection carries on.
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: b.addr, Meta: map[string]string{"note": "v2"}}}))
	assert.Equal(t, "b", ask("meta changed"))
	assert.Equal(t, "v2", pool.Endpoint(b.addr).Meta("note"))
}
