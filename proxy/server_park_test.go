package proxy

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

// idleClients opens n connections to addr and makes one request on each;
// the connections stay open, kept alive and silent.
func idleClients(t *testing.T, addr string, n int) ([]net.Conn, []*bufio.Reader) {
	t.Helper()
	conns := make([]net.Conn, n)
	brs := make([]*bufio.Reader, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		conns[i], brs[i] = c, bufio.NewReader(c)
		roundTripOn(t, c, brs[i])
	}
	return conns, brs
}

func roundTripOn(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "a", string(body))
}

// forEachTCPPath runs test with the engine's loops and with the
// goroutine path that parks idle connections (used when the engine
// cannot serve the handler, or off Linux).
func forEachTCPPath(t *testing.T, test func(t *testing.T, noEngine bool)) {
	for _, noEngine := range []bool{false, true} {
		name := "engine"
		if noEngine {
			name = "parked"
		}
		t.Run(name, func(t *testing.T) { test(t, noEngine) })
	}
}

// TestServerIdleConnectionsHoldNoGoroutine: on a TCP listener, connections
// waiting for their next request are parked on the poller, not on a
// goroutine each, and are served again when a request comes.
func TestServerIdleConnectionsHoldNoGoroutine(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, noEngine bool) {
		b := startBackend(t, "a")
		srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
		srv.noEngine = noEngine
		addr := serveFast(t, srv)
		_, warm := idleClients(t, addr, 1)
		_ = warm
		base := runtime.NumGoroutine()
		const n = 200
		conns, brs := idleClients(t, addr, n)
		require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, 5*time.Second, 5*time.Millisecond,
			"goroutines: %d before, %d with %d idle connections", base, runtime.NumGoroutine(), n)
		for i, c := range conns {
			roundTripOn(t, c, brs[i])
		}
		// Pipelined requests arriving on a parked connection are all answered.
		_, err := io.WriteString(conns[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		for range 2 {
			resp, err := http.ReadResponse(brs[0], nil)
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}
	})
}

// TestServerIdleTimeout: a kept-alive connection that sends nothing for
// IdleTimeout is closed, parked or not.
func TestServerIdleTimeout(t *testing.T) {
	for _, mode := range []string{"engine", "parked", "goroutine"} {
		t.Run(mode, func(t *testing.T) {
			plain := mode == "goroutine"
			b := startBackend(t, "a")
			srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b), IdleTimeout: 100 * time.Millisecond})
			srv.noEngine = mode == "parked"
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			served := make(chan error, 1)
			var l net.Listener = ln
			if plain {
				l = plainListener{ln}
			}
			go func() { served <- srv.Serve(context.Background(), l) }()
			conns, _ := idleClients(t, ln.Addr().String(), 3)
			start := time.Now()
			for _, c := range conns {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Read(make([]byte, 1))
				assert.ErrorIs(t, err, io.EOF)
			}
			assert.Less(t, time.Since(start), 2*time.Second)
			require.NoError(t, srv.Close())
			require.NoError(t, <-served)
		})
	}
}

// TestServerShutdownParked: Shutdown closes parked connections and does
// not wait for its context to end; Close does the same.
func TestServerShutdownParked(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, noEngine bool) {
		for _, shutdown := range []bool{true, false} {
			t.Run(map[bool]string{true: "Shutdown", false: "Close"}[shutdown], func(t *testing.T) {
				b := startBackend(t, "a")
				srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
				srv.noEngine = noEngine
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				served := make(chan error, 1)
				go func() { served <- srv.Serve(context.Background(), ln) }()
				conns, _ := idleClients(t, ln.Addr().String(), 20)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if shutdown {
					require.NoError(t, srv.Shutdown(ctx))
				} else {
					require.NoError(t, srv.Close())
				}
				require.NoError(t, ctx.Err())
				for _, c := range conns {
					_, err := c.Read(make([]byte, 1))
					assert.ErrorIs(t, err, io.EOF)
				}
				require.NoError(t, <-served)
			})
		}
	})
}

// TestServerServeAgainAfterListenerFails: a Server whose listener failed
// parks the connections of a later Serve as well.
func TestServerServeAgainAfterListenerFails(t *testing.T) {
	forEachTCPPath(t, func(t *testing.T, noEngine bool) {
		b := startBackend(t, "a")
		srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
		srv.noEngine = noEngine
		for range 2 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(context.Background(), ln) }()
			conns, brs := idleClients(t, ln.Addr().String(), 2)
			ln.Close()
			require.Error(t, <-served)
			roundTripOn(t, conns[0], brs[0])
			for _, c := range conns {
				c.Close()
			}
		}
		require.NoError(t, srv.Close())
	})
}

// TestServerBusyConnectionsParkLater: a connection whose request comes
// soon after it parked waits for the next one on its goroutine (cheaper
// than parking for every request) and parks after parkAfter.
func TestServerBusyConnectionsParkLater(t *testing.T) {
	old := parkAfter
	parkAfter = 500 * time.Millisecond
	t.Cleanup(func() { parkAfter = old }) // runs after the server stopped
	b := startBackend(t, "a")
	srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
	srv.noEngine = true // parking is the goroutine path's
	addr := serveFast(t, srv)
	idleClients(t, addr, 1)
	base := runtime.NumGoroutine()
	const n = 50
	conns, brs := idleClients(t, addr, n)
	for i, c := range conns {
		roundTripOn(t, c, brs[i]) // within parkAfter: busy
	}
	assert.GreaterOrEqual(t, runtime.NumGoroutine(), base+n*8/10, "busy connections wait on their goroutines")
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, parkAfter+3*time.Second, 10*time.Millisecond,
		"goroutines: %d before, %d with %d idle connections", base, runtime.NumGoroutine(), n)
	for i, c := range conns {
		roundTripOn(t, c, brs[i])
	}
}

// TestServerFirstRequestDoesNotMakeBusy: the wait between a connection's
// arrival and its first request does not make it busy: after answering,
// it parks at once.
func TestServerFirstRequestDoesNotMakeBusy(t *testing.T) {
	b := startBackend(t, "a")
	srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
	srv.noEngine = true // parking is the goroutine path's
	addr := serveFast(t, srv)
	idleClients(t, addr, 1)
	base := runtime.NumGoroutine()
	const n = 50
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		conns[i] = c
	}
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, 5*time.Second, 5*time.Millisecond, "new connections park")
	for _, c := range conns {
		roundTripOn(t, c, bufio.NewReader(c))
	}
	require.Eventually(t, func() bool { return runtime.NumGoroutine() < base+n/10 }, parkAfter/2, 5*time.Millisecond,
		"goroutines: %d before, %d after one request on each of %d connections", base, runtime.NumGoroutine(), n)
}
