//go:build linux

package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEngineHalfClosedClient: a client that sends its request and then
// its FIN (printf | nc) gets the whole answer, then the connection
// closes. The request and the FIN arrive in one edge-triggered event:
// the engine must read on to the end of the stream, not stop at the
// first short read.
func TestEngineHalfClosedClient(t *testing.T) {
	b := startBackend(t, "a")
	srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
	addr := serveFast(t, srv)
	for range 20 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		assert.Equal(t, "a", string(body))
		_, err = br.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "closed after the answer")
		c.Close()
	}
}

// TestEngineBusyConnectionsHoldNoGoroutine: requests waiting for their
// backend cost the engine no goroutine, where the goroutine path keeps
// one per request. The in-process backend keeps its own per connection
// on both, so the paths are compared.
func TestEngineBusyConnectionsHoldNoGoroutine(t *testing.T) {
	const n = 50
	grown := map[bool]int{}
	for _, noEngine := range []bool{true, false} {
		b := startBackend(t, "a")
		srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
		srv.noEngine = noEngine
		addr := serveFast(t, srv)
		base := runtime.NumGoroutine()
		conns := make([]net.Conn, n)
		for i := range conns {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			conns[i] = c
		}
		for range n {
			<-b.entered
		}
		grown[noEngine] = runtime.NumGoroutine() - base
		close(b.hold)
		for _, c := range conns {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			assert.Equal(t, "a", string(body))
		}
	}
	assert.Less(t, grown[false], grown[true]-n/2,
		"goroutines with %d requests in flight: %d more on the engine, %d on the goroutine path", n, grown[false], grown[true])
}

// TestEngineSlowReader: a large answer to a client that reads slowly
// arrives whole: the engine keeps what the client cannot take yet and
// reads from the backend only as the client drains.
func TestEngineSlowReader(t *testing.T) {
	b := startBackend(t, "a")
	srv := newServer(t, ServerConfig{Handler: newTestHTTP(t, b)})
	addr := serveFast(t, srv)
	for _, path := range []string{"/download/8000000?cl=1", "/download/3000000"} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		h := sha256.New()
		buf := make([]byte, 32<<10)
		var total int64
		for i := 0; ; i++ {
			n, err := resp.Body.Read(buf)
			h.Write(buf[:n])
			total += int64(n)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			if i%8 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		want := sha256.New()
		io.CopyN(want, pattern{}, total)
		assert.Equal(t, hex.EncodeToString(want.Sum(nil)), hex.EncodeToString(h.Sum(nil)), path)
		if resp.Trailer != nil {
			assert.Equal(t, hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Checksum"), path)
		}
		c.Close()
	}
}

// TestEngineBackendIdleTimeout: a loop's kept-alive backend connection
// is closed once idle for HTTPConfig.IdleTimeout.
func TestEngineBackendIdleTimeout(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{IdleTimeout: 100 * time.Millisecond}, b)
	code, body, _ := get(t, testClient(t, 1), p.url+"/")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "a", body)
	require.Equal(t, 1, p.h.IdleConns(b.addr))
	require.Eventually(t, func() bool { return p.h.IdleConns(b.addr) == 0 && b.open.Load() == 0 }, 5*time.Second, 5*time.Millisecond)
}
