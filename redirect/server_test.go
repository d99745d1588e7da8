package redirect

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

// redirStartServer serves h with a Server on loopback and returns its
// address; the server is shut down when the test ends.
func redirStartServer(t testing.TB, h *Handler) string {
	t.Helper()
	return redirStartServerPath(t, h, pathEngine)
}

// redirStartServerPath is redirStartServer on a TCP listener, served
// the path's way (pathEngine or pathParked).
func redirStartServerPath(t testing.TB, h *Handler, path string) string {
	t.Helper()
	s := redirServer(t, ServerConfig{Handler: h})
	s.noEngine = path != pathEngine
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, s.Shutdown(ctx))
		assert.NoError(t, <-done, "a stopped server's Serve returns nil")
	})
	return ln.Addr().String()
}

// redirServer is NewServer for tests.
func redirServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	require.NoError(t, err)
	return s
}

// redirRaw sends raw on a new connection and reads one response.
func redirRaw(t *testing.T, addr, raw string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(conn, raw)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// TestServerMatchesHandler sends the same raw requests to the handler in
// net/http and to the Server: same status, same Location.
func TestServerMatchesHandler(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirB})})
	std := httptest.NewServer(h)
	t.Cleanup(std.Close)
	fast := redirStartServer(t, h)

	requests := []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /a? HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
		"GET HTTPS://evil.example HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET //evil.example/a HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /%0d%0aSet-Cookie:x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /?a=%0D%0ALocation:x HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /p HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n\r\n",
		"GET /p HTTP/1.0\r\n\r\n",
		"GET /m/../../admin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a\rSet-Cookie:x HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /" + strings.Repeat("%41", 3000) + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	}
	for _, raw := range requests {
		t.Run(strings.SplitN(raw, "\r\n", 2)[0][:min(40, strings.Index(raw, "\r\n"))], func(t *testing.T) {
			want := redirRaw(t, std.Listener.Addr().String(), raw)
			got := redirRaw(t, fast, raw)
			assert.Equal(t, want.StatusCode, got.StatusCode)
			assert.Equal(t, want.Header.Get("Location"), got.Header.Get("Location"))
			if got.StatusCode < 400 {
				assert.Equal(t, want.Header.Get("Cache-Control"), got.Header.Get("Cache-Control"))
				assert.True(t, strings.HasPrefix(got.Header.Get("Location"), "http://127.0.0.2:8082/mirror/"))
				assert.NotEmpty(t, got.Header.Get("Date"))
			}
		})
	}
}

func TestServerStrict(t *testing.T) { forEachTCPPath(t, testStrict) }

func testStrict(t *testing.T, path string) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	addr := redirStartServerPath(t, h, path)
	tests := []struct {
		name, raw string
		code      int
		close     bool
	}{
		{"obs fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400, true},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", 400, true},
		{"bare LF", "GET / HTTP/1.1\nHost: x\n\n", 400, true},
		{"bare LF header", "GET / HTTP/1.1\r\nHost: x\n\r\n", 400, true},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, true},
		{"bad CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", 400, true},
		{"NUL in header", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, true},
		{"version", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, true},
		{"garbage version", "GET / FTP/1.1\r\nHost: x\r\n\r\n", 400, true},
		{"authority form", "CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
		{"empty absolute-form authority", "GET http:///x HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
		{"bad escape in an absolute-form path", "GET http://x/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
		{"absolute form", "GET HTTP://evil.example HTTP/1.1\r\nHost: x\r\n\r\n", 302, false},
		{"asterisk form", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 307, false},
		{"long line", "GET /" + strings.Repeat("a", DefaultMaxHeaderBytes) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414, true},
		{"many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 40) + "\r\n", 431, true},
		{"chunked body", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 307, true},
		{"large body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", 307, true},
		{"expect", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", 307, true},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", 302, true},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 302, false},
		{"small body kept", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 307, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := redirRaw(t, addr, tt.raw)
			assert.Equal(t, tt.code, resp.StatusCode)
			assert.Equal(t, tt.close, resp.Close, "Connection: close")
			if tt.code < 400 {
				assert.Equal(t, "http://127.0.0.1:8081/", resp.Header.Get("Location"))
			}
		})
	}
}

func TestServerPipelining(t *testing.T) { forEachTCPPath(t, testPipelining) }

func testPipelining(t *testing.T, path string) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	addr := redirStartServerPath(t, h, path)
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(conn, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"+
		"GET /3?q HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	for i, want := range []string{"/1", "/2", "/3?q"} {
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err, "response %d", i)
		resp.Body.Close()
		assert.Equal(t, "http://127.0.0.1:8081"+want, resp.Header.Get("Location"))
	}
}

func TestServerEndToEnd(t *testing.T) {
	bs := []*redirBackend{redirStartBackend(t, "a"), redirStartBackend(t, "b")}
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{{URL: bs[0].srv.URL}, {URL: bs[1].srv.URL}}), StickyCookie: redirCookie})
	url := "http://" + redirStartServer(t, h)
	c := redirClient(t)
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	c.Jar = jar

	first, err := redirGet(c, url+"/x")
	require.NoError(t, err)
	for range 10 {
		name, err := redirGet(c, url+"/x")
		require.NoError(t, err)
		assert.Equal(t, first, name)
	}
	resp, err := c.Post(url+"/up?k=v", "text/plain", strings.NewReader("payload"))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "POST /up?k=v payload", string(body))
	// A body bigger than the server skips: answered, then closed.
	big := strings.Repeat("z", maxSkipBody+1)
	resp, err = c.Post(url+"/big", "text/plain", strings.NewReader(big))
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "POST /big "+big, string(body))
}

func TestServerNoBackend(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	h.Pool().SetHealthy(netip.MustParseAddrPort("127.0.0.1:8081"), false)
	addr := redirStartServer(t, h)
	resp := redirRaw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "5", resp.Header.Get("Retry-After"))
	assert.False(t, resp.Close, "503 keeps the connection")

	f := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA}), FallbackURL: "http://198.18.0.1/sorry"})
	f.Pool().SetHealthy(netip.MustParseAddrPort("127.0.0.1:8081"), false)
	resp = redirRaw(t, redirStartServer(t, f), "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	assert.Equal(t, 302, resp.StatusCode)
	assert.Equal(t, "http://198.18.0.1/sorry", resp.Header.Get("Location"))
}

func TestServerShutdown(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	s := redirServer(t, ServerConfig{Handler: h, IdleTimeout: time.Hour})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	resp.Body.Close()

	// The kept-alive idle connection does not hold Shutdown up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	require.NoError(t, <-done)
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF)
	assert.ErrorIs(t, s.Serve(context.Background(), ln), ErrServerClosed)
}

func TestServerAllocations(t *testing.T) {
	for _, cfg := range []Config{{}, {StickyCookie: redirCookie}, {Key: balancer.MustParseKey("client")}} {
		h := redirNew(t, cfg)
		sc := &srvConn{s: &Server{cfg: ServerConfig{Handler: h}}, out: make([]byte, 0, 1024)}
		raw := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: x\r\nCookie: a=b\r\n\r\n")
		r := bytes.NewReader(raw)
		sc.br = bufio.NewReaderSize(r, 4096)
		allocs := testing.AllocsPerRun(200, func() {
			r.Reset(raw)
			sc.br.Reset(r)
			sc.out = sc.out[:0]
			if keep, err := sc.step(false); !keep || err != nil {
				t.Fatal(keep, err)
			}
		})
		assert.Zero(t, allocs)
		assert.Contains(t, string(sc.out), "Location: http")
	}
}

// FuzzServer feeds arbitrary bytes to the server's request loop. Property:
// no panic, every response parses, and every Location starts with a
// configured base URL followed by a single "/" (or is absent).
func FuzzServer(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET http://evil.example//x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.0\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: y\r\n\r\n"))
	f.Add([]byte("GET /%0d%0a HTTP/1.1\r\nHost: x\r\nCookie: lbkit_backend=AAAAAAAAAAAAAAAAAAAAAA\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"))
	f.Add([]byte("GET /a/../b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"))
	h, err := New(Config{Pool: redirPool(f, []tgt{redirA, redirB, redirC}), DuplicateLinks: 1, StickyCookie: redirCookie})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		sc := &srvConn{s: &Server{cfg: ServerConfig{Handler: h, MaxHeaderBytes: 2048}}, br: bufio.NewReaderSize(bytes.NewReader(in), 512)}
		for range 8 {
			if keep, _ := sc.step(false); !keep {
				break
			}
		}
		br := bufio.NewReader(bytes.NewReader(sc.out))
		for {
			if _, err := br.Peek(1); err == io.EOF {
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("unparsable response: %v\n%q", err, sc.out)
			}
			io.Copy(io.Discard, resp.Body)
			if loc := resp.Header.Get("Location"); loc != "" {
				base := redirBaseOf(loc)
				if base == "" || strings.HasPrefix(loc[len(base):], "//") {
					t.Fatalf("Location %q outside the bases", loc)
				}
			}
			if len(resp.Header.Values("Location")) > 1 || len(resp.Header.Values("Set-Cookie")) > 1 {
				t.Fatalf("injected header in %q", sc.out)
			}
		}
	})
}

// TestServerSplitArrival feeds pipelined requests one byte at a time
// through a small buffer, so the reader refills and slides its buffer in
// the middle of requests: the answers must equal those for the input in
// one piece.
func TestServerSplitArrival(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirB}), StickyCookie: redirCookie, CookieKey: []byte("0123456789abcdef")})
	input := []byte("GET /first/path?with=query HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\n\r\n" +
		"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload" +
		"GET /third/" + strings.Repeat("p", 60) + "?q=" + strings.Repeat("v", 40) + " HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.18.0.1\r\n\r\n")
	run := func(r io.Reader, size int) string {
		sc := &srvConn{s: &Server{cfg: ServerConfig{Handler: h}}, br: bufio.NewReaderSize(r, size)}
		for range 10 {
			if keep, _ := sc.step(false); !keep {
				break
			}
		}
		var lines []string
		for l := range strings.SplitSeq(string(sc.out), "\r\n") {
			if !strings.HasPrefix(l, "Date: ") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	whole := run(bytes.NewReader(input), 4096)
	assert.Equal(t, 3, strings.Count(whole, "HTTP/1.1 30"), whole)
	assert.Contains(t, whole, "Location: http://127.0.0.2:8082/mirror/first/path?with=query\n")
	assert.Contains(t, whole, "Location: http://127.0.0.2:8082/mirror/third/"+strings.Repeat("p", 60)+"?q="+strings.Repeat("v", 40))
	assert.Equal(t, whole, run(io.MultiReader(ppBytewiseRedir(input)...), 256))
}

func ppBytewiseRedir(b []byte) []io.Reader {
	rs := make([]io.Reader, len(b))
	for i := range b {
		rs[i] = bytes.NewReader(b[i : i+1])
	}
	return rs
}

// TestServerPipelineFlood pipelines many requests before reading any
// answer: the server writes as it goes and answers every one.
func TestServerPipelineFlood(t *testing.T) { forEachTCPPath(t, testPipelineFlood) }

func testPipelineFlood(t *testing.T, path string) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	addr := redirStartServerPath(t, h, path)
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	const n = 2000
	go func() {
		req := "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n"
		io.WriteString(conn, strings.Repeat(req, n))
	}()
	br := bufio.NewReader(conn)
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err, "response %d", i)
		resp.Body.Close()
		require.Equal(t, "http://127.0.0.1:8081/flood", resp.Header.Get("Location"))
	}
}

// TestServerLifecycle: the end of Serve's context closes connections and
// stops the server for good; Close stops it now; Serve returns nil when
// stopped and ErrServerClosed when already stopped.
func TestServerLifecycle(t *testing.T) {
	_, err := NewServer(ServerConfig{})
	assert.ErrorContains(t, err, "Handler is required")
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	_, err = NewServer(ServerConfig{Handler: h, IdleTimeout: -1})
	assert.ErrorContains(t, err, "negative")

	serveOne := func(t *testing.T, s *Server, ctx context.Context) (chan error, *bufio.Reader) {
		ln := redirListen(t)
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, ln) }()
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		resp.Body.Close()
		return done, br
	}
	t.Run("context", func(t *testing.T) {
		s := redirServer(t, ServerConfig{Handler: h})
		ctx, cancel := context.WithCancel(context.Background())
		done, br := serveOne(t, s, ctx)
		cancel()
		assert.NoError(t, <-done)
		_, err := br.ReadByte()
		assert.Error(t, err, "open connections are closed")
		assert.ErrorIs(t, s.Serve(context.Background(), redirListen(t)), ErrServerClosed)
		require.NoError(t, s.Shutdown(context.Background()))
	})
	t.Run("Close", func(t *testing.T) {
		s := redirServer(t, ServerConfig{Handler: h})
		done, br := serveOne(t, s, context.Background())
		require.NoError(t, s.Close())
		assert.NoError(t, <-done)
		_, err := br.ReadByte()
		assert.Error(t, err)
		require.NoError(t, s.Close(), "idempotent")
		assert.ErrorIs(t, s.Serve(context.Background(), redirListen(t)), ErrServerClosed)
	})
}

func redirListen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// BenchmarkServerStep is the Server's own cost per request, without the
// network: parse one pipelined request head and render the redirect.
func BenchmarkServerStep(b *testing.B) {
	h, err := New(Config{Pool: redirPool(b, []tgt{redirA, redirB, redirC})})
	if err != nil {
		b.Fatal(err)
	}
	raw := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n")
	r := bytes.NewReader(raw)
	sc := &srvConn{s: &Server{cfg: ServerConfig{Handler: h}}, br: bufio.NewReaderSize(r, 4096), out: make([]byte, 0, 1024)}
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(raw)
		sc.br.Reset(r)
		sc.out = sc.out[:0]
		if keep, err := sc.step(false); !keep {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandlerServeHTTP is the handler's cost per request under
// net/http, without the server: the decision and the header map writes.
func BenchmarkHandlerServeHTTP(b *testing.B) {
	h, err := New(Config{Pool: redirPool(b, []tgt{redirA, redirB, redirC})})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/static/app.js?v=42", nil)
	w := &redirWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}

// TestServerTimeouts runs a connection over an in-memory pipe in a
// synctest bubble: a kept-alive connection is closed after IdleTimeout,
// and a request head that stalls halfway after ReadTimeout.
func TestServerTimeouts(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA})})
	tests := []struct {
		name  string
		send  string
		after time.Duration // when the server must have closed
		want  string        // in the answer; "" for none
	}{
		{"idle keep-alive", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", time.Minute, "302 Found"},
		{"stalled head", "GET / HTTP/1.1\r\nHo", 10 * time.Second, ""},
		// Issue 16: the time between body bytes is bounded on its own.
		{"stalled body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc", 3 * time.Second, "307"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := redirServer(t, ServerConfig{Handler: h, IdleTimeout: time.Minute, ReadTimeout: 10 * time.Second, BodyIdleTimeout: 3 * time.Second})
				client, server := net.Pipe()
				done := make(chan struct{})
				go func() { s.serveConn(server); close(done) }()
				start := time.Now()
				go io.WriteString(client, tt.send)
				out, _ := io.ReadAll(client) // until the server closes
				<-done
				assert.Equal(t, tt.after, time.Since(start))
				if tt.want != "" {
					assert.Contains(t, string(out), tt.want)
				} else {
					assert.Empty(t, out, "a stalled request gets no answer")
				}
				client.Close()
			})
		})
	}
}
