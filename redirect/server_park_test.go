package redirect

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// plainListener hides a *net.TCPListener's type: the server keeps a
// goroutine per connection on it.
type plainListener struct{ net.Listener }

// Ways a Server serves a listener.
const (
	pathEngine    = "engine"    // a TCP listener: the event loops
	pathParked    = "parked"    // a TCP listener without the engine: goroutines, idle ones parked
	pathGoroutine = "goroutine" // another listener: a goroutine per connection
)

// forEachTCPPath runs test with the engine's loops and with the
// goroutine path that parks idle connections (used off Linux).
func forEachTCPPath(t *testing.T, test func(t *testing.T, path string)) {
	for _, path := range []string{pathEngine, pathParked} {
		t.Run(path, func(t *testing.T) { test(t, path) })
	}
}

// parkServe serves a new Server with cfg (Handler filled in) on
// loopback, the path's way; it returns the server, its address and
// Serve's result.
func parkServe(t *testing.T, cfg ServerConfig, path string) (*Server, string, chan error) {
	t.Helper()
	if cfg.Handler == nil {
		cfg.Handler = redirNew(t, Config{})
	}
	s := redirServer(t, cfg)
	s.noEngine = path != pathEngine
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var l net.Listener = ln
	if path == pathGoroutine {
		l = plainListener{ln}
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	return s, ln.Addr().String(), done
}

// redirIdle opens n connections to addr and makes one request on each;
// they stay open, kept alive and silent.
func redirIdle(t *testing.T, addr string, n int) ([]net.Conn, []*bufio.Reader) {
	t.Helper()
	conns := make([]net.Conn, n)
	brs := make([]*bufio.Reader, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		conns[i], brs[i] = c, bufio.NewReader(c)
		redirRoundTrip(t, c, brs[i])
	}
	return conns, brs
}

func redirRoundTrip(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_, err := io.WriteString(c, "GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	require.Equal(t, http.StatusFound, resp.StatusCode)
}

// TestServerIdleConnectionsHoldNoGoroutine: on a TCP listener, connections
// waiting for their next request are parked, not on a goroutine each,
// and are answered again when a request comes, pipelined ones included.
func TestServerIdleConnectionsHoldNoGoroutine(t *testing.T) {
	forEachTCPPath(t, testIdleConnectionsHoldNoGoroutine)
}

func testIdleConnectionsHoldNoGoroutine(t *testing.T, path string) {
	s, addr, done := parkServe(t, ServerConfig{}, path)
	redirIdle(t, addr, 1)
	base := runtime.NumGoroutine()
	const n = 200
	conns, brs := redirIdle(t, addr, n)
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, 5*time.Second, 5*time.Millisecond,
		"goroutines: %d before, %d with %d idle connections", base, runtime.NumGoroutine(), n)
	for i, c := range conns {
		redirRoundTrip(t, c, brs[i])
	}
	_, err := io.WriteString(conns[0], "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	for range 2 {
		resp, err := http.ReadResponse(brs[0], nil)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		assert.Equal(t, http.StatusFound, resp.StatusCode)
	}
	require.NoError(t, s.Close())
	require.NoError(t, <-done)
}

// TestServerIdleTimeoutParked: a kept-alive connection that sends nothing
// for IdleTimeout is closed, parked or not.
func TestServerIdleTimeoutParked(t *testing.T) {
	for _, path := range []string{pathEngine, pathParked, pathGoroutine} {
		t.Run(path, func(t *testing.T) {
			s, addr, done := parkServe(t, ServerConfig{IdleTimeout: 100 * time.Millisecond}, path)
			conns, _ := redirIdle(t, addr, 3)
			start := time.Now()
			for _, c := range conns {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Read(make([]byte, 1))
				assert.ErrorIs(t, err, io.EOF)
			}
			assert.Less(t, time.Since(start), 2*time.Second)
			require.NoError(t, s.Close())
			require.NoError(t, <-done)
		})
	}
}

// TestServerShutdownParked: Shutdown and Close close parked connections
// without waiting for the context to end.
func TestServerShutdownParked(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, path string) {
		testShutdownParked(t, path)
	})
}

func testShutdownParked(t *testing.T, path string) {
	for _, shutdown := range []bool{true, false} {
		t.Run(map[bool]string{true: "Shutdown", false: "Close"}[shutdown], func(t *testing.T) {
			s, addr, done := parkServe(t, ServerConfig{}, path)
			conns, _ := redirIdle(t, addr, 20)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if shutdown {
				require.NoError(t, s.Shutdown(ctx))
			} else {
				require.NoError(t, s.Close())
			}
			require.NoError(t, ctx.Err())
			for _, c := range conns {
				_, err := c.Read(make([]byte, 1))
				assert.ErrorIs(t, err, io.EOF)
			}
			require.NoError(t, <-done)
		})
	}
}

// TestServerPlainListener: on a listener that is not a *net.TCPListener
// the server answers with a goroutine per connection.
func TestServerPlainListener(t *testing.T) {
	s, addr, done := parkServe(t, ServerConfig{}, pathGoroutine)
	conns, brs := redirIdle(t, addr, 3)
	for i, c := range conns {
		redirRoundTrip(t, c, brs[i])
	}
	require.NoError(t, s.Close())
	require.NoError(t, <-done)
}

// TestServerBusyConnectionsParkLater: a connection whose request comes
// soon after it parked waits for the next one on its goroutine and parks
// after parkAfter.
func TestServerBusyConnectionsParkLater(t *testing.T) {
	old := parkAfter
	parkAfter = 500 * time.Millisecond
	t.Cleanup(func() { parkAfter = old })
	s, addr, done := parkServe(t, ServerConfig{}, pathParked) // the engine keeps no goroutine at all
	redirIdle(t, addr, 1)
	base := runtime.NumGoroutine()
	const n = 50
	conns, brs := redirIdle(t, addr, n)
	for i, c := range conns {
		redirRoundTrip(t, c, brs[i]) // within parkAfter: busy
	}
	assert.GreaterOrEqual(t, runtime.NumGoroutine(), base+n*8/10, "busy connections wait on their goroutines")
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, parkAfter+3*time.Second, 10*time.Millisecond,
		"goroutines: %d before, %d with %d idle connections", base, runtime.NumGoroutine(), n)
	for i, c := range conns {
		redirRoundTrip(t, c, brs[i])
	}
	require.NoError(t, s.Close())
	require.NoError(t, <-done)
}
