package redirect

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

// exchange sends raw on a new connection to addr, shuts the sending
// side and returns all the server wrote until it closed, Date lines
// blanked.
func exchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	out, err := io.ReadAll(c)
	require.NoError(t, err)
	return dateLine.ReplaceAllString(string(out), "Date: -\r\n")
}

var dateLine = regexp.MustCompile(`Date: [^\r]*\r\n`)

// TestServerEngineSameBytes: the loops answer every request, pipelined
// ones, bodies and refusals included, with the bytes the goroutine path
// answers it with, and close where it closes.
func TestServerEngineSameBytes(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirB}), StickyCookie: redirCookie, CookieKey: []byte("0123456789abcdef")})
	engine := redirStartServerPath(t, h, pathEngine)
	parked := redirStartServerPath(t, h, pathParked)
	get := func(p string) string { return "GET " + p + " HTTP/1.1\r\nHost: x\r\n\r\n" }
	tests := map[string]string{
		"one":               get("/a?b=c"),
		"pipelined":         get("/1") + "POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" + get("/3") + "HEAD /4 HTTP/1.0\r\n\r\n",
		"http/1.0":          "GET /p HTTP/1.0\r\n\r\n" + get("/never"),
		"http/1.0 kept":     "GET /p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get("/q"),
		"close":             "GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + get("/never"),
		"cookie":            "GET /p HTTP/1.1\r\nHost: x\r\nCookie: " + redirCookie + "=nope\r\n\r\n",
		"xff":               "GET /p HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.18.0.1\r\n\r\n",
		"chunked":           "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + get("/never"),
		"large body":        "POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 100000),
		"skipped body":      "PUT /s HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + strings.Repeat("b", 60000) + get("/after"),
		"expect":            "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
		"body cut short":    "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
		"head cut short":    "GET /p HTTP/1.1\r\nHo",
		"bare LF":           get("/ok") + "GET / HTTP/1.1\nHost: x\n\n",
		"bad version":       "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
		"CL and TE":         "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"no host":           "GET / HTTP/1.1\r\n\r\n",
		"connect":           "CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n",
		"dot segments":      "GET /m/../../admin HTTP/1.1\r\nHost: x\r\n\r\n",
		"long line":         "GET /" + strings.Repeat("a", DefaultMaxHeaderBytes-5),
		"many headers":      ("GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 998)+"\r\n", 17))[:DefaultMaxHeaderBytes],
		"after a long head": get("/"+strings.Repeat("a", DefaultMaxHeaderBytes-100)) + get("/next"),
		"empty":             "",
	}
	for name, raw := range tests {
		t.Run(name, func(t *testing.T) {
			want := exchange(t, parked, raw)
			assert.Equal(t, want, exchange(t, engine, raw))
		})
	}
}

// TestServerEngineBusyConnectionsHoldNoGoroutine: on the loops, even
// connections whose requests come one after another hold no goroutine
// (the goroutine path keeps busy ones on theirs).
func TestServerEngineBusyConnectionsHoldNoGoroutine(t *testing.T) {
	s, addr, done := parkServe(t, ServerConfig{}, pathEngine)
	redirIdle(t, addr, 1)
	base := runtime.NumGoroutine()
	const n = 50
	conns, brs := redirIdle(t, addr, n)
	for i, c := range conns {
		redirRoundTrip(t, c, brs[i])
	}
	assert.Less(t, runtime.NumGoroutine(), base+n/10)
	require.NoError(t, s.Close())
	require.NoError(t, <-done)
}

// TestServerEngineTimeouts: on both paths, a request head that stalls
// is dropped after ReadTimeout without an answer, a body that stalls is
// answered and dropped after BodyIdleTimeout, and a kept-alive
// connection is closed after IdleTimeout.
func TestServerEngineTimeouts(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, path string) {
		const read, body, idle = time.Second, 250 * time.Millisecond, 2 * time.Second
		tests := []struct {
			name          string
			send          string
			want          string
			after, before time.Duration // when the server must close
		}{
			{"stalled head", "GET / HTTP/1.1\r\nHo", "", read, idle},
			{"stalled body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc", "307 Temporary Redirect", body, read},
			{"idle", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "302 Found", idle, 2 * idle},
		}
		s, addr, done := parkServe(t, ServerConfig{ReadTimeout: read, BodyIdleTimeout: body, IdleTimeout: idle}, path)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, err := net.Dial("tcp", addr)
				require.NoError(t, err)
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				start := time.Now()
				_, err = io.WriteString(c, tt.send)
				require.NoError(t, err)
				out, err := io.ReadAll(c)
				took := time.Since(start)
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					err = nil // a reset after the answer is a close
				}
				require.NoError(t, err)
				assert.GreaterOrEqual(t, took, tt.after-tt.after/8-5*time.Millisecond)
				assert.Less(t, took, tt.before)
				if tt.want == "" {
					assert.Empty(t, out)
				} else {
					assert.Contains(t, string(out), tt.want)
				}
			})
		}
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
	})
}

// TestServerEngineLingers: a request answered with "Connection: close"
// while its body may still come is closed gracefully: the client that
// goes on sending its body reads the whole answer, then EOF.
func TestServerEngineLingers(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, path string) {
		s, addr, done := parkServe(t, ServerConfig{}, path)
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
		require.NoError(t, err)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
		assert.True(t, resp.Close)
		chunk := []byte(strings.Repeat("b", 64<<10))
		for range 4 { // within h1.LingerBytes: read and dropped
			_, err := c.Write(chunk)
			require.NoError(t, err)
		}
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		_, err = br.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "the server shut its side down and read the body away")
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
	})
}

// TestServerEngineShutdownClosesWaitingConnections: on the loops,
// Shutdown closes at once the connections waiting for the rest of a
// request head (without an answer) or of a body it skips, as the
// goroutine path's Shutdown ends their reads. (The goroutine path can
// miss a read whose deadline it sets as Shutdown sets its own, so the
// test runs on the loops only.)
func TestServerEngineShutdownClosesWaitingConnections(t *testing.T) {
	s, addr, done := parkServe(t, ServerConfig{ReadTimeout: time.Minute, BodyIdleTimeout: time.Minute}, pathEngine)
	head, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer head.Close()
	body, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer body.Close()
	for _, c := range []net.Conn{head, body} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	_, err = io.WriteString(head, "GET /slow HTTP/1.1\r\nHo")
	require.NoError(t, err)
	_, err = io.WriteString(body, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, s.Shutdown(t.Context()))
	assert.Less(t, time.Since(start), 5*time.Second)
	for _, c := range []net.Conn{head, body} {
		// The body's answer may have come; a connection closed with
		// bytes unread is reset.
		out, err := io.ReadAll(c)
		if err != nil {
			assert.ErrorIs(t, err, syscall.ECONNRESET)
		}
		if c == head {
			assert.Empty(t, out, "a partial request head gets no answer")
		}
	}
	require.NoError(t, <-done)
}

// TestServerEngineAllocs: a request answered on the loops allocates
// nothing, in the whole process (the client's raw reads and writes
// allocate nothing either).
func TestServerEngineAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("counts the process's allocations")
	}
	for _, cfg := range []Config{{}, {StickyCookie: redirCookie}, {Key: balancer.MustParseKey("client")}} {
		cfg.Pool = redirPool(t, []tgt{redirA})
		s, addr, done := parkServe(t, ServerConfig{Handler: redirNew(t, cfg)}, pathEngine)
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: x\r\nCookie: a=b\r\n\r\n")
		_, err = c.Write(req)
		require.NoError(t, err)
		var first []byte
		for !bytes.HasSuffix(first, []byte("\r\n\r\n")) { // the answer has no body
			b := make([]byte, 4096)
			n, err := c.Read(b)
			require.NoError(t, err)
			first = append(first, b[:n]...)
		}
		buf := make([]byte, len(first)) // every answer has this length
		allocs := testing.AllocsPerRun(200, func() {
			c.Write(req)
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
		})
		assert.Zero(t, allocs)
		assert.Contains(t, string(buf), "Location: http")
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
	}
}
