package proxy

import (
	"bufio"

	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// keepAliveBackend is a minimal allocation-free HTTP/1.1 backend: for
// every request head (bodyless requests only) it writes answer. It lets a
// benchmark count the proxy's allocations alone.
func keepAliveBackend(tb testing.TB, answer string) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	done := make(chan struct{})
	var conns []net.Conn
	connCh := make(chan net.Conn, 64)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connCh <- c
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				out := []byte(answer)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(line) == 2 {
						if _, err := c.Write(out); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		close(connCh)
		for c := range connCh {
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Close()
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct {
	hdr  http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkForward measures the forwarding path alone: ServeHTTP called
// directly with a parsed request, over a real keep-alive loopback
// connection to an allocation-free backend. allocs/op is the proxy's.
func BenchmarkForward(b *testing.B) {
	addr := keepAliveBackend(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\nContent-Length: 2\r\n\r\nok")
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(b, pool.Set([]balancer.Backend{{Addr: addr}}))
	h, err := NewHTTP(HTTPConfig{Pool: pool})
	require.NoError(b, err)
	defer h.Close()
	req, err := http.NewRequest("GET", "http://example.com/path?q=1", nil)
	require.NoError(b, err)
	req.RequestURI = "/path?q=1"
	req.RemoteAddr = "192.0.2.7:51234"
	req.Header.Set("User-Agent", "bench")
	req.Header.Set("Accept", "*/*")
	w := &discardWriter{hdr: make(http.Header, 8)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.hdr)
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// TestHTTPForwardAllocs holds the forwarding path's allocations: the
// response header block and its value slice, and context.AfterFunc's
// registration (two). Everything else is pooled or on the stack.
func TestHTTPForwardAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	addr := keepAliveBackend(t, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: addr}}))
	h, err := NewHTTP(HTTPConfig{Pool: pool})
	require.NoError(t, err)
	defer h.Close()
	req, err := http.NewRequest("GET", "http://example.com/", nil)
	require.NoError(t, err)
	req.RequestURI = "/"
	req.RemoteAddr = "192.0.2.7:51234"
	w := &discardWriter{hdr: make(http.Header, 8)}
	allocs := testing.AllocsPerRun(200, func() {
		clear(w.hdr)
		h.ServeHTTP(w, req)
	})
	require.Equal(t, http.StatusOK, w.code)
	require.LessOrEqual(t, allocs, 5.0)
}
