package looppeers

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/benchmarks/looppeers/peertest"
)

func newResponder(t *testing.T) *Responder {
	t.Helper()
	r, err := NewResponder([]netip.AddrPort{peertest.Backend})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

// feed runs a loop's part over req delivered step bytes at a time: it
// keeps what Serve did not consume and stops when Serve closes.
func feed(r *Responder, req string, step int) []byte {
	var c Conn
	var out, held []byte
	for i := 0; i < len(req); i += step {
		held = append(held, req[i:min(i+step, len(req))]...)
		var n int
		var closeConn bool
		out, n, closeConn = r.Serve(&c, out, held)
		if closeConn {
			break
		}
		held = append(held[:0], held[n:]...)
	}
	return out
}

// TestServeAsRedirectServer: whole or a byte at a time, every case gets
// the bytes redirect.Server sends for it.
func TestServeAsRedirectServer(t *testing.T) {
	r := newResponder(t)
	ref := peertest.Reference(t)
	for name, req := range peertest.Cases {
		want, err := peertest.Converse(ref, req)
		require.NoError(t, err, name)
		for _, step := range []int{len(req), 7, 1} {
			got := peertest.NormalizeDate(feed(r, req, step))
			assert.Equal(t, string(want), string(got), "%s, %d bytes at a time", name, step)
		}
	}
}

// TestServeHeadTooLong: a head that cannot fit MaxHeadBytes is refused
// with 414 when its request line does not fit, 431 otherwise, as soon as
// MaxHeadBytes of it arrived; one byte less is waited on.
func TestServeHeadTooLong(t *testing.T) {
	r := newResponder(t)
	longLine := "GET /" + strings.Repeat("a", MaxHeadBytes) + " HTTP/1.1\r\n"
	longHead := "GET / HTTP/1.1\r\nHost: b\r\nX: " + strings.Repeat("a", MaxHeadBytes) + "\r\n\r\n"
	for req, code := range map[string]int{longLine: http.StatusRequestURITooLong, longHead: http.StatusRequestHeaderFieldsTooLarge} {
		var c Conn
		out, n, closeConn := r.Serve(&c, nil, []byte(req[:MaxHeadBytes-1]))
		assert.False(t, closeConn)
		assert.Empty(t, out)
		assert.Zero(t, n)
		out, _, closeConn = r.Serve(&c, nil, []byte(req[:MaxHeadBytes]))
		assert.True(t, closeConn)
		assert.True(t, strings.HasPrefix(string(out), "HTTP/1.1 "+strconv.Itoa(code)+" "), "%q", out)
		assert.Contains(t, string(out), "Connection: close\r\n")
	}
}

// TestConnIdle: a Conn holds state between calls only while it skips a
// request body.
func TestConnIdle(t *testing.T) {
	r := newResponder(t)
	var c Conn
	req := "POST /y HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\nab"
	out, n, closeConn := r.Serve(&c, nil, []byte(req))
	require.False(t, closeConn)
	assert.Contains(t, string(out), "307 Temporary Redirect")
	assert.Equal(t, len(req), n)
	assert.False(t, c.Idle())
	out, n, _ = r.Serve(&c, nil, []byte("cd"))
	assert.Empty(t, out)
	assert.Equal(t, 2, n)
	assert.True(t, c.Idle())
}

// TestServeAlloc: answering keep-alive requests, pipelined or not,
// allocates nothing.
func TestServeAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	r := newResponder(t)
	in := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: b\r\n\r\nGET /a%20b HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nxy")
	out := make([]byte, 0, 4096)
	r.Serve(&Conn{}, out, in) // warm the pools
	allocs := testing.AllocsPerRun(100, func() {
		var c Conn
		out, _, _ = r.Serve(&c, out[:0], in)
	})
	assert.Zero(t, allocs)
}
