package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHTTPMaxConnsQueue(t *testing.T) { forEachFrontEnd(t, testHTTPMaxConnsQueue) }

func testHTTPMaxConnsQueue(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{MaxConns: 1, MaxQueue: 1, QueueTimeout: 3 * time.Second}, b)
	c := testClient(t, 4)

	// A takes the only slot and blocks in the backend.
	first := make(chan int, 1)
	go func() {
		code, _, _ := get(t, c, p.url+"/slow")
		first <- code
	}()
	<-b.entered

	// B queues and times out: 503.
	second := make(chan string, 1)
	go func() {
		code, body, _ := get(t, c, p.url+"/")
		second <- fmt.Sprint(code, " ", body)
	}()
	require.Eventually(t, func() bool { return queued(p.h) == 1 }, 10*time.Second, time.Millisecond)

	// C finds the queue full: 503 at once.
	code, body, _ := get(t, c, p.url+"/")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "queue full")

	assert.Equal(t, "503 proxy: backends busy, timed out in queue\n", <-second)
	close(b.hold)
	assert.Equal(t, http.StatusOK, <-first)
	assert.Equal(t, int64(1), b.hits.Load(), "only A reached the backend")
}

func TestHTTPQueuedRequestServed(t *testing.T) { forEachFrontEnd(t, testHTTPQueuedRequestServed) }

func testHTTPQueuedRequestServed(t *testing.T, fe frontEnd) {
	a, bk := startBackend(t, "a"), startBackend(t, "b")
	p := startProxyFE(t, fe, HTTPConfig{MaxConns: 1, MaxQueue: 8, QueueTimeout: time.Minute}, a, bk)
	c := testClient(t, 4)
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 2 {
		wg.Go(func() {
			code, _, _ := get(t, c, p.url+"/slow")
			codes <- code
		})
	}
	<-a.entered
	<-bk.entered
	// Both backends are full: the next request waits for whichever frees
	// a slot first.
	wg.Go(func() {
		code, body, _ := get(t, c, p.url+"/")
		assert.Equal(t, "b", body)
		codes <- code
	})
	require.Eventually(t, func() bool { return queued(p.h) == 1 }, 10*time.Second, time.Millisecond)
	close(bk.hold)
	require.Eventually(t, func() bool { return queued(p.h) == 0 }, 10*time.Second, time.Millisecond)
	close(a.hold)
	wg.Wait()
	close(codes)
	for code := range codes {
		assert.Equal(t, http.StatusOK, code)
	}
}

func queued(h *HTTP) int {
	h.lim.mu.Lock()
	defer h.lim.mu.Unlock()
	return h.lim.queued
}

func TestHTTPStickyCookie(t *testing.T) { forEachFrontEnd(t, testHTTPStickyCookie) }

func testHTTPStickyCookie(t *testing.T, fe frontEnd) {
	bs := []*testBackend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	p := startProxyFE(t, fe, HTTPConfig{StickyCookie: "srv", CookieKey: []byte("0123456789abcdef0123")}, bs...)
	c := testClient(t, 2)

	resp, err := c.Get(p.url + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cookies := resp.Cookies()
	require.Len(t, cookies, 1)
	ck := cookies[0]
	assert.Equal(t, "srv", ck.Name)
	assert.NotContains(t, ck.Value, "127.0.0.1", "the cookie does not reveal the address")
	assert.True(t, ck.HttpOnly)

	getWith := func(cookie string) (string, []*http.Cookie) {
		req, _ := http.NewRequest("GET", p.url+"/", nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.Cookies()
	}
	for range 10 {
		got, set := getWith("other=1; srv=" + ck.Value)
		assert.Equal(t, string(body), got, "sticks to its backend")
		assert.Empty(t, set, "no new cookie while the backend is ready")
	}
	// A forged value is ignored and replaced.
	_, set := getWith("srv=forged")
	assert.Len(t, set, 1)

	// The sticky backend becomes unready: the client moves and gets a new cookie.
	var addr netip.AddrPort
	for _, b := range bs {
		if b.name == string(body) {
			addr = b.addr
		}
	}
	p.pool.SetDraining(addr, true)
	got, set := getWith("srv=" + ck.Value)
	assert.NotEqual(t, string(body), got)
	require.Len(t, set, 1)
	assert.NotEqual(t, ck.Value, set[0].Value)
}

func TestHTTPForwardedHeaders(t *testing.T) { forEachFrontEnd(t, testHTTPForwardedHeaders) }

func testHTTPForwardedHeaders(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	tests := []struct {
		name    string
		trusted bool
		want    []string
		absent  []string
	}{
		{
			name: "untrusted peer: replaced",
			want: []string{
				"X-Forwarded-For: 127.0.0.1\n",
				"X-Forwarded-Proto: http\n",
				"X-Forwarded-Host: app.example\n",
				"Forwarded: for=127.0.0.1;host=\"app.example\";proto=http\n",
				"Via: 1.1 edge\n",
				"Host: app.example\n",
				"X-Keep: yes\n",
			},
			absent: []string{"198.51.100.66", "evil.example", "X-Secret", "Keep-Alive", "Te:", "Proxy-Connection", "Upgrade"},
		},
		{
			name:    "trusted peer: extended",
			trusted: true,
			want: []string{
				"X-Forwarded-For: 198.51.100.66, 127.0.0.1\n",
				"X-Forwarded-Proto: https\n",
				"X-Forwarded-Host: evil.example\n",
				"Forwarded: for=198.51.100.66, for=127.0.0.1;host=\"app.example\";proto=http\n",
			},
			absent: []string{"X-Secret", "Keep-Alive"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := HTTPConfig{Via: "edge"}
			if tt.trusted {
				cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			}
			p := startProxyFE(t, fe, cfg, b)
			out := rawRoundTrip(t, p.addr, "GET /headers HTTP/1.1\r\nHost: app.example\r\n"+
				"X-Forwarded-For: 198.51.100.66\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"+
				"Forwarded: for=198.51.100.66\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\nKeep-Alive: 300\r\n"+
				"Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Keep: yes\r\n\r\n")
			require.True(t, strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n"), out)
			_, body, _ := strings.Cut(out, "\r\n\r\n")
			for _, w := range tt.want {
				assert.Contains(t, body, w)
			}
			for _, a := range tt.absent {
				assert.NotContains(t, body, a)
			}
			assert.Contains(t, out, "Via: 1.1 edge\r\n", "Via on the response too")
		})
	}
}

func TestHTTPResponseHopByHop(t *testing.T) { forEachFrontEnd(t, testHTTPResponseHopByHop) }

func testHTTPResponseHopByHop(t *testing.T, fe frontEnd) {
	addr := rawBackend(t, "HTTP/1.1 200 OK\r\nConnection: X-Private, close\r\nX-Private: s3cret\r\nKeep-Alive: timeout=5\r\n"+
		"Proxy-Connection: x\r\nX-Public: ok\r\nContent-Length: 2\r\n\r\nhi")
	p := startProxyAddrsFE(t, fe, HTTPConfig{}, addr)
	code, body, hdr := get(t, testClient(t, 1), p.url+"/")
	assert.Equal(t, 200, code)
	assert.Equal(t, "hi", body)
	assert.Equal(t, "ok", hdr.Get("X-Public"))
	for _, k := range []string{"X-Private", "Keep-Alive", "Proxy-Connection"} {
		assert.Empty(t, hdr.Get(k), k)
	}
}

func TestHTTPWebSocket(t *testing.T) { forEachFrontEnd(t, testHTTPWebSocket) }

func testHTTPWebSocket(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{}, b)
	c, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br, resp := wsHandshake(t, c)
	assert.Equal(t, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", resp.Header.Get("Sec-WebSocket-Accept"))
	assert.Equal(t, "websocket", resp.Header.Get("Upgrade"))
	for _, msg := range []string{"hello", "through", "the proxy"} {
		require.NoError(t, writeWSFrame(c, 1, []byte(msg)))
		op, payload, err := readWSFrame(br)
		require.NoError(t, err)
		assert.Equal(t, byte(1), op)
		assert.Equal(t, msg, string(payload))
	}
	require.NoError(t, writeWSFrame(c, 8, nil))
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the tunnel closes after the backend hangs up")
}

// wsHandshake asks for a WebSocket upgrade on c and reads the 101.
func wsHandshake(t *testing.T, c net.Conn) (*bufio.Reader, *http.Response) {
	t.Helper()
	_, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	return br, resp
}

func TestHTTPServerSentEvents(t *testing.T) { forEachFrontEnd(t, testHTTPServerSentEvents) }

func testHTTPServerSentEvents(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{}, b)
	resp, err := testClient(t, 1).Get(p.url + "/sse")
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		// Each event arrives while the backend is still blocked before
		// the next one: nothing is buffered in the proxy.
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("data: %d\n", i), line)
		_, err = br.ReadString('\n')
		require.NoError(t, err)
		if i == 0 {
			close(b.hold)
		}
	}
}

func TestHTTPLargeBodies(t *testing.T) { forEachFrontEnd(t, testHTTPLargeBodies) }

func testHTTPLargeBodies(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{}, b)
	c := testClient(t, 2)
	// 64 MiB each way; 16 MiB under -race or -short, where copying
	// through the race detector's instrumented loops takes most of a
	// minute on a 2-core runner.
	size := int64(64 << 20)
	if testing.Short() || raceEnabled {
		size = 16 << 20
	}
	sum := sha256.New()
	io.Copy(sum, io.LimitReader(pattern{}, size))
	want := hex.EncodeToString(sum.Sum(nil))

	t.Run("upload with Content-Length", func(t *testing.T) {
		req, err := http.NewRequest("POST", p.url+"/upload", io.LimitReader(pattern{}, size))
		require.NoError(t, err)
		req.ContentLength = size
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		assert.Equal(t, fmt.Sprintf("%d %s ", size, want), string(got))
	})
	t.Run("upload chunked with trailer", func(t *testing.T) {
		req, err := http.NewRequest("POST", p.url+"/upload", io.LimitReader(pattern{}, size))
		require.NoError(t, err)
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Checksum": {"abc"}}
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		assert.Equal(t, fmt.Sprintf("%d %s abc", size, want), string(got))
	})
	for _, cl := range []bool{false, true} {
		t.Run(fmt.Sprintf("download content-length=%v", cl), func(t *testing.T) {
			url := fmt.Sprintf("%s/download/%d", p.url, size)
			if cl {
				url += "?cl=1"
			}
			resp, err := c.Get(url)
			require.NoError(t, err)
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			require.NoError(t, err)
			assert.Equal(t, size, n)
			assert.Equal(t, want, hex.EncodeToString(h.Sum(nil)))
			if !cl {
				assert.Equal(t, want, resp.Trailer.Get("X-Checksum"), "trailers pass through")
			}
		})
	}
}

func TestHTTPClientSmuggling(t *testing.T) {
	b := startBackend(t, "a")
	p := startProxy(t, HTTPConfig{}, b)
	tests := []struct {
		name, raw, status string
	}{
		{"differing Content-Length", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc", "400"},
		{"unsupported Transfer-Encoding", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "501"},
		{"two Transfer-Encoding fields", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "501"},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "400"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", "400"},
		{"bad chunk size", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"},
		{"oversized header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", "431"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.hits.Load()
			out := rawRoundTrip(t, p.addr, tt.raw)
			assert.True(t, strings.HasPrefix(out, "HTTP/1.1 "+tt.status), out)
			assert.Equal(t, before, b.hits.Load(), "nothing reached the backend")
		})
	}
	t.Run("obs-fold is unfolded to one line", func(t *testing.T) {
		out := rawRoundTrip(t, p.addr, "GET /headers HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\nConnection: close\r\n\r\n")
		require.True(t, strings.HasPrefix(out, "HTTP/1.1 200"), out)
		assert.Contains(t, out, "\nX-A: 1 folded\n")
	})
	t.Run("CL.TE: chunked wins, the smuggled request stays body", func(t *testing.T) {
		before := b.hits.Load()
		smuggled := "GET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n"
		body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
		out := rawRoundTrip(t, p.addr, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"+
			"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+body)
		require.True(t, strings.HasPrefix(out, "HTTP/1.1 200"), out)
		sum := sha256.Sum256([]byte(smuggled))
		assert.Contains(t, out, fmt.Sprintf("%d %x", len(smuggled), sum), "the backend got the whole chunked body")
		assert.NotContains(t, out, "418")
		assert.Equal(t, before+1, b.hits.Load(), "exactly one request reached the backend")
	})
}

func TestHTTPUpstreamProtocolErrors(t *testing.T) { forEachFrontEnd(t, testHTTPUpstreamProtocolErrors) }

func testHTTPUpstreamProtocolErrors(t *testing.T, fe frontEnd) {
	tests := []struct {
		name, answer string
	}{
		{"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"differing CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
		{"bad CL", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"},
		{"gzip TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx"},
		{"bad status line", "HTTP/1.1 2000 OK\r\n\r\n"},
		{"HTTP/2 status line", "HTTP/2 200 OK\r\n\r\n"},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"},
		{"CR in value", "HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 0\r\n\r\n"},
		{"oversized header", "HTTP/1.1 200 OK\r\nX-A: " + strings.Repeat("a", 80<<10) + "\r\n\r\n"},
		{"truncated head", "HTTP/1.1 200 OK\r\nContent-"},
		{"unsolicited 101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawBackend(t, tt.answer)
			p := startProxyAddrsFE(t, fe, HTTPConfig{MaxTries: 1}, addr)
			code, body, _ := get(t, testClient(t, 1), p.url+"/")
			assert.Equal(t, http.StatusBadGateway, code)
			assert.Contains(t, body, "bad gateway")
		})
	}
}

func TestHTTPTimeouts(t *testing.T) { forEachFrontEnd(t, testHTTPTimeouts) }

func testHTTPTimeouts(t *testing.T, fe frontEnd) {
	t.Run("response header timeout is 504", func(t *testing.T) {
		b := startBackend(t, "a")
		p := startProxyFE(t, fe, HTTPConfig{ResponseHeaderTimeout: 50 * time.Millisecond, MaxTries: 1}, b)
		code, body, _ := get(t, testClient(t, 1), p.url+"/slow")
		assert.Equal(t, http.StatusGatewayTimeout, code)
		assert.Equal(t, "proxy: gateway timeout\n", body)
	})
	t.Run("request timeout is 504", func(t *testing.T) {
		b := startBackend(t, "a")
		p := startProxyFE(t, fe, HTTPConfig{RequestTimeout: 50 * time.Millisecond, MaxTries: 1}, b)
		code, _, _ := get(t, testClient(t, 1), p.url+"/slow")
		assert.Equal(t, http.StatusGatewayTimeout, code)
	})
	t.Run("refused connection is 502", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := netip.MustParseAddrPort(ln.Addr().String())
		ln.Close()
		p := startProxyAddrsFE(t, fe, HTTPConfig{}, addr)
		code, _, _ := get(t, testClient(t, 1), p.url+"/")
		assert.Equal(t, http.StatusBadGateway, code)
	})
}

func TestHTTPRetryStatuses(t *testing.T) { forEachFrontEnd(t, testHTTPRetryStatuses) }

func testHTTPRetryStatuses(t *testing.T, fe frontEnd) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	p := startProxyFE(t, fe, HTTPConfig{RetryStatuses: []int{503}, RetryBufferBytes: 1 << 10, MaxTries: 2}, a, b)
	c := testClient(t, 2)
	// /status/503 answers 503 everywhere: the last answer is passed on
	// after trying both backends.
	code, _, _ := get(t, c, p.url+"/status/503")
	assert.Equal(t, 503, code)
	assert.Equal(t, int64(1), a.hits.Load())
	assert.Equal(t, int64(1), b.hits.Load())
	// Not retried: POST is not idempotent.
	resp, err := c.Post(p.url+"/status/503", "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, int64(3), a.hits.Load()+b.hits.Load())
	// PUT is, and its small body is buffered and replayed.
	req, _ := http.NewRequest("PUT", p.url+"/status/503", strings.NewReader("x"))
	resp, err = c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, int64(5), a.hits.Load()+b.hits.Load())
}

func TestHTTPDrainLosesNothing(t *testing.T) { forEachFrontEnd(t, testHTTPDrainLosesNothing) }

func testHTTPDrainLosesNothing(t *testing.T, fe frontEnd) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	p := startProxyFE(t, fe, HTTPConfig{}, a, b)
	c := testClient(t, 8)
	// Warm both up so each has idle connections.
	for range 4 {
		get(t, c, p.url+"/")
	}
	require.Positive(t, p.h.IdleConns(a.addr))

	inflight := make(chan string, 1)
	go func() {
		for {
			resp, err := c.Get(p.url + "/slow")
			if err != nil {
				inflight <- err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) == "a" || resp.StatusCode != 200 {
				inflight <- fmt.Sprint(resp.StatusCode, string(body))
				return
			}
		}
	}()
	close(b.hold) // b's /slow answers at once; a's holds
	<-a.entered
	p.pool.SetDraining(a.addr, true)
	require.Eventually(t, func() bool { return p.h.IdleConns(a.addr) == 0 && a.open.Load() == 1 }, 10*time.Second, time.Millisecond,
		"a draining backend's idle connections are closed; the one in flight stays")
	for range 20 {
		_, body, _ := get(t, c, p.url+"/")
		assert.Equal(t, "b", body, "nothing new goes to a draining backend")
	}
	close(a.hold)
	assert.Equal(t, "200a", <-inflight, "the request in flight finished")
	assert.Zero(t, p.h.IdleConns(a.addr), "its connection was closed, not kept")
	assert.Eventually(t, func() bool { return a.open.Load() == 0 }, 10*time.Second, time.Millisecond)
	p.pool.Remove(a.addr)
	assert.Zero(t, p.pool.Endpoints()[0].InFlight())
}

func TestHTTPShutdownFinishesInFlight(t *testing.T) {
	forEachFrontEnd(t, testHTTPShutdownFinishesInFlight)
}

func testHTTPShutdownFinishesInFlight(t *testing.T, fe frontEnd) {
	b := startBackend(t, "a")
	p := startProxyFE(t, fe, HTTPConfig{}, b)
	done := make(chan string, 1)
	go func() {
		_, body, _ := get(t, testClient(t, 1), p.url+"/slow")
		done <- body
	}()
	<-b.entered
	shut := make(chan error, 1)
	go func() { shut <- p.shutdown(t.Context()) }()
	close(b.hold)
	assert.Equal(t, "a", <-done)
	require.NoError(t, <-shut)
}

// startProxyAddrsFE is startProxy over bare addresses, behind the
// front-end fe.
func startProxyAddrsFE(t *testing.T, fe frontEnd, cfg HTTPConfig, addrs ...netip.AddrPort) *testProxy {
	var bs []*testBackend
	for _, a := range addrs {
		bs = append(bs, &testBackend{addr: a})
	}
	return startProxyFE(t, fe, cfg, bs...)
}

func TestHTTPRemovedBackendIdleClosed(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	p := startProxy(t, HTTPConfig{}, a, b)
	c := testClient(t, 2)
	for range 6 {
		get(t, c, p.url+"/")
	}
	require.Positive(t, p.h.IdleConns(a.addr))
	require.Positive(t, a.open.Load())
	require.True(t, p.pool.Remove(a.addr))
	require.Eventually(t, func() bool { return a.open.Load() == 0 }, 10*time.Second, time.Millisecond,
		"the proxy closed its connections to the removed backend")
	for range 4 {
		_, body, _ := get(t, c, p.url+"/")
		assert.Equal(t, "b", body)
	}
}

func TestHTTPUpstreamFraming(t *testing.T) { forEachFrontEnd(t, testHTTPUpstreamFraming) }

func testHTTPUpstreamFraming(t *testing.T, fe frontEnd) {
	tests := []struct {
		name, method, answer string
		code                 int
		body                 string
	}{
		{"close-delimited", "GET", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", 200, "until the end"},
		{"HTTP/1.0", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", 200, "old"},
		{"interim 100 and 103 skipped", "GET", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok"},
		{"204 has no body", "GET", "HTTP/1.1 204 No Content\r\n\r\n", 204, ""},
		{"304 has no body", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 304, ""},
		{"HEAD ignores Content-Length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 200, ""},
		{"chunked with extension", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n1\r\nc\r\n0\r\n\r\n", 200, "abc"},
		{"equal Content-Length list", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", 200, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawBackend(t, tt.answer)
			p := startProxyAddrsFE(t, fe, HTTPConfig{MaxTries: 1}, addr)
			req, _ := http.NewRequest(tt.method, p.url+"/", nil)
			resp, err := testClient(t, 1).Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.code, resp.StatusCode)
			assert.Equal(t, tt.body, string(body))
		})
	}
}

func TestHTTPUpstreamBodyCutShort(t *testing.T) { forEachFrontEnd(t, testHTTPUpstreamBodyCutShort) }

func testHTTPUpstreamBodyCutShort(t *testing.T, fe frontEnd) {
	// The backend promises 100 bytes and hangs up after 5: the client's
	// response is aborted, never completed as if it were whole.
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
	} {
		addr := rawBackend(t, answer)
		p := startProxyAddrsFE(t, fe, HTTPConfig{MaxTries: 1}, addr)
		resp, err := testClient(t, 1).Get(p.url + "/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		assert.Error(t, err, "the client sees the failure: %q", answer)
	}
}
