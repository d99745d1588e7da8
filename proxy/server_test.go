package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

func TestServerRefusesAmbiguousRequests(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	smuggled := "GET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n"
	tests := []struct {
		name, raw, status string
	}{
		{"CL.TE", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"TE.CL", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"differing Content-Length", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc", "400"},
		{"differing Content-Length list", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", "400"},
		{"signed Content-Length", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", "400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", "400"},
		{"bare LF in a header", "GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", "400"},
		{"bare LF ending the head", "GET / HTTP/1.1\nHost: x\n\n", "400"},
		{"CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n", "400"},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "400"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", "400"},
		{"no Host in HTTP/1.1", "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", "400"},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"},
		{"Transfer-Encoding in HTTP/1.0", "POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"unsupported Transfer-Encoding", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"},
		{"two Transfer-Encoding fields", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", "417"},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"},
		{"HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", "505"},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"relative target", "GET a HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"huge header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", "431"},
		{"huge request line", "GET /" + strings.Repeat("a", 100<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", "414"},
		{"bad escape in an absolute-form path", "GET http://x/a%zz?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"escaped space in an absolute-form authority", "GET http://a%20b/x HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"empty absolute-form authority", "GET http:///x HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"user info in an absolute-form authority", "GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"bad escape in an origin-form path", "GET /a%2 HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"bad chunk size", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.hits.Load()
			out := rawRoundTrip(t, p.addr, tt.raw)
			require.True(t, strings.HasPrefix(out, "HTTP/1.1 "+tt.status+" "), out)
			assert.Equal(t, 1, strings.Count(out, "HTTP/1.1 "), "one answer, then the connection is closed: %q", out)
			assert.NotContains(t, out, "418")
			if tt.name != "bad chunk size" { // refused while its body streams: the backend saw the head
				assert.Equal(t, before, b.hits.Load(), "nothing reached the backend")
			}
		})
	}
}

func TestServerPipelining(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Three requests in one write, a body and a chunked body among them.
	_, err = io.WriteString(c, "GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"+
		"GET /status/202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	var got []string
	for range 4 {
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		got = append(got, resp.Status+" "+string(body))
	}
	sum := "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	assert.Equal(t, []string{"201 Created a", "200 OK 5 " + sum + " ", "200 OK 5 " + sum + " ", "202 Accepted a"}, got)
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "closed after Connection: close")
}

func TestServerExpectContinue(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 100 Continue\r\n", line, "the body is asked for before it is sent")
	line, err = br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "\r\n", line)
	_, err = io.WriteString(c, "hello")
	require.NoError(t, err)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, 200, resp.StatusCode)
	assert.True(t, strings.HasPrefix(string(body), "5 2cf24dba"), string(body))
}

func TestServerHTTP10(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	t.Run("close by default", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "GET /download/10 HTTP/1.0\r\n\r\n")
		require.True(t, strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n"), out)
		assert.Contains(t, out, "Connection: close\r\n")
		assert.NotContains(t, out, "Transfer-Encoding", "an HTTP/1.0 client gets a body delimited by close")
		_, body, _ := strings.Cut(out, "\r\n\r\n")
		assert.Len(t, body, 10)
	})
	t.Run("keep-alive", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n")
		assert.Equal(t, 2, strings.Count(out, "HTTP/1.1 200 OK\r\n"), out)
		assert.Contains(t, out, "Connection: keep-alive\r\n")
	})
}

func TestServerServeAndShutdown(t *testing.T) {
	b := startBackend(t, "a")
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: b.addr}}))
	h, err := NewHTTP(HTTPConfig{Pool: pool})
	require.NoError(t, err)
	defer h.Close()

	t.Run("config", func(t *testing.T) {
		_, err := NewServer(ServerConfig{})
		assert.ErrorContains(t, err, "Handler is required")
		_, err = NewServer(ServerConfig{Handler: h, ReadTimeout: -1})
		assert.ErrorContains(t, err, "negative")
	})
	// serveOne serves s on a new listener until ctx ends and answers one
	// request on a kept-alive connection, whose reader it returns.
	serveOne := func(t *testing.T, s *Server, ctx context.Context) (chan error, *bufio.Reader) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, ln) }()
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		resp.Body.Close()
		return done, br
	}
	stopped := func(t *testing.T, s *Server) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		assert.ErrorIs(t, s.Serve(t.Context(), ln), ErrServerClosed, "stopped for good")
	}
	t.Run("context ends Serve as Close, and Serve returns nil", func(t *testing.T) {
		s := newServer(t, ServerConfig{Handler: h})
		ctx, cancel := context.WithCancel(t.Context())
		done, br := serveOne(t, s, ctx)
		cancel()
		require.NoError(t, <-done)
		_, err := br.ReadByte()
		assert.Error(t, err, "the idle connection was closed")
		stopped(t, s)
		require.NoError(t, s.Shutdown(t.Context()))
		require.NoError(t, s.Close())
	})
	t.Run("Close stops now", func(t *testing.T) {
		s := newServer(t, ServerConfig{Handler: h})
		done, br := serveOne(t, s, t.Context())
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
		_, err := br.ReadByte()
		assert.Error(t, err)
		require.NoError(t, s.Close(), "idempotent")
	})
	t.Run("Close before Serve", func(t *testing.T) {
		s := newServer(t, ServerConfig{Handler: h})
		require.NoError(t, s.Close())
		stopped(t, s)
	})
	t.Run("Shutdown closes idle connections and refuses Serve", func(t *testing.T) {
		s := newServer(t, ServerConfig{Handler: h})
		done, br := serveOne(t, s, t.Context())
		require.NoError(t, s.Shutdown(t.Context()))
		require.NoError(t, <-done)
		_, err := br.ReadByte()
		assert.ErrorIs(t, err, io.EOF)
		stopped(t, s)
	})
	t.Run("ListenAndServe", func(t *testing.T) {
		s := newServer(t, ServerConfig{Handler: h})
		err := s.ListenAndServe(t.Context(), "256.0.0.1:0")
		assert.Error(t, err)
	})
}

// TestServerAllocs holds the whole round trip through Server — parsing,
// forwarding, the answer — to no allocation per request once warm, with
// no key and with a key read from the head (hooks unset).
func TestServerAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, key := range []string{"", "header:user-agent", "client"} {
		t.Run("key="+key, func(t *testing.T) { testServerAllocs(t, balancer.MustParseKey(key)) })
	}
}

func testServerAllocs(t *testing.T, key balancer.Key) {
	const answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
	addr := keepAliveBackend(t, answer)
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Add(balancer.Backend{Addr: addr}))
	p := startProxyAddrsFE(t, fastServer, HTTPConfig{Pool: pool, Key: key})
	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := []byte("GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	// The answer as the client sees it: the backend's head, same length
	// each time.
	buf := make([]byte, 4096)
	roundTrip := func() int {
		if _, err := c.Write(req); err != nil {
			return -1
		}
		n := 0
		for {
			m, err := c.Read(buf[n:])
			if err != nil {
				return -1
			}
			n += m
			if n >= 4 && string(buf[n-4:n]) == "\r\nok" {
				return n
			}
		}
	}
	n := roundTrip()
	require.Positive(t, n)
	require.True(t, strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200 OK\r\n"), string(buf[:n]))
	allocs := testing.AllocsPerRun(500, func() {
		if roundTrip() < 0 {
			panic("round trip failed")
		}
	})
	require.LessOrEqual(t, allocs, 0.5)
}

func TestServerClientGoneDuringResponse(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /download/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
	_, err = io.ReadFull(c, make([]byte, 1<<20))
	require.NoError(t, err)
	c.Close()
	// The proxy notices on its next write and frees the connection.
	require.Eventually(t, func() bool { return p.pool.Endpoints()[0].InFlight() == 0 }, 10*time.Second, time.Millisecond)
	code, _, _ := get(t, testClient(t, 1), p.url+"/")
	assert.Equal(t, http.StatusOK, code)
}

func TestServerRequestForms(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	t.Run("absolute form: its authority is the Host", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "GET http://app.example/headers?x=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
		require.True(t, strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n"), out)
		assert.Contains(t, out, "Host: app.example\n")
	})
	t.Run("asterisk form only for OPTIONS", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "GET * HTTP/1.1\r\nHost: x\r\n\r\n")
		assert.True(t, strings.HasPrefix(out, "HTTP/1.1 400 "), out)
	})
	t.Run("CONNECT is refused", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n")
		assert.True(t, strings.HasPrefix(out, "HTTP/1.1 405 "), out)
	})
	t.Run("HEAD gets no body", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "HEAD /download/100?cl=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		require.True(t, strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n"), out)
		assert.Contains(t, out, "Content-Length: 100\r\n")
		assert.True(t, strings.HasSuffix(out, "\r\n\r\n"), "nothing after the head: %q", out)
	})
}

func TestServerExpectContinueRefused(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fastServer, HTTPConfig{}, b)
	p.pool.SetHealthy(b.addr, false)
	// No backend: the answer comes without 100 Continue, and the
	// connection is closed since the body was never asked for.
	out := rawRoundTrip(t, p.addr, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	require.True(t, strings.HasPrefix(out, "HTTP/1.1 503 "), out)
	assert.NotContains(t, out, "100 Continue")
	assert.Contains(t, out, "Connection: close\r\n")
}

// newServer is NewServer for tests.
func newServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	require.NoError(t, err)
	return s
}

// serveFast serves srv on a loopback listener until cleanup and returns
// its address.
func serveFast(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(context.Background(), ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return ln.Addr().String()
}

func newTestHTTP(t *testing.T, backends ...*testBackend) *HTTP {
	t.Helper()
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	for _, b := range backends {
		require.NoError(t, pool.Add(balancer.Backend{Addr: b.addr}))
	}
	h, err := NewHTTP(HTTPConfig{Pool: pool})
	require.NoError(t, err)
	t.Cleanup(func() {
		h.Close()
		pool.Close()
	})
	return h
}

// TestServerBodyIdleTimeout: a client that announces a body, sends part
// of it and goes silent is disconnected after BodyIdleTimeout (issue 16),
// with the idle and read timeouts far away.
func TestServerBodyIdleTimeout(t *testing.T) {
	assert.Equal(t, 30*time.Second, DefaultServerBodyIdleTimeout)
	b := startBackend(t, "a")
	addr := serveFast(t, newServer(t, ServerConfig{Handler: newTestHTTP(t, b), BodyIdleTimeout: 100 * time.Millisecond, ReadTimeout: time.Minute, IdleTimeout: time.Minute}))
	for _, body := range []string{"Content-Length: 1000\r\n\r\nabc", "Transfer-Encoding: chunked\r\n\r\n3e8\r\nabc"} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\n"+body)
		require.NoError(t, err)
		out, err := io.ReadAll(c)
		require.NoError(t, err, "the server closes the connection; the client does not time out")
		assert.NotContains(t, string(out), "200 OK")
		c.Close()
	}
}

// TestServerBodyIdleTimeoutNotOnUpgrades: a WebSocket stream may stay
// silent for longer than BodyIdleTimeout.
func TestServerBodyIdleTimeoutNotOnUpgrades(t *testing.T) {
	b := startBackend(t, "a")
	addr := serveFast(t, newServer(t, ServerConfig{Handler: newTestHTTP(t, b), BodyIdleTimeout: 20 * time.Millisecond}))
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br, _ := wsHandshake(t, c)
	// Silence for ten body timeouts: the read times out on our side, the
	// connection stays up.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = br.ReadByte()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	require.NoError(t, writeWSFrame(c, 1, []byte("still there")))
	_, payload, err := readWSFrame(br)
	require.NoError(t, err)
	assert.Equal(t, "still there", string(payload))
}
