package proxy

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// testBackend is a real HTTP server on loopback.
type testBackend struct {
	name string
	addr netip.AddrPort
	srv  *http.Server
	hits atomic.Int64
	open atomic.Int64 // connections open on the backend
	// hold, when non-nil, blocks /slow until closed.
	hold chan struct{}
	// entered receives a value when /slow is entered.
	entered chan struct{}
}

// startBackend starts a backend named name with the routes the tests
// use. It is stopped at cleanup.
func startBackend(t testing.TB, name string) *testBackend {
	t.Helper()
	return startBackendProtocols(t, name, nil)
}

// startH2CBackend starts a backend that speaks HTTP/1.1 and h2c.
func startH2CBackend(t testing.TB, name string) *testBackend {
	t.Helper()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return startBackendProtocols(t, name, &p)
}

func startBackendProtocols(t testing.TB, name string, protos *http.Protocols) *testBackend {
	t.Helper()
	b := &testBackend{name: name, hold: make(chan struct{}), entered: make(chan struct{}, 64)}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintf(w, "Host: %s\nProto: %s\n", r.Host, r.Proto)
		for _, k := range keys {
			fmt.Fprintf(w, "%s: %s\n", k, strings.Join(r.Header[k], " | "))
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.entered <- struct{}{}
		select {
		case <-b.hold:
		case <-r.Context().Done():
		}
		io.WriteString(w, name)
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		code, _ := strconv.Atoi(r.PathValue("code"))
		w.Header().Set("X-Backend", name)
		w.WriteHeader(code)
		io.WriteString(w, name)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%d %x %s", n, h.Sum(nil), r.Trailer.Get("X-Checksum"))
	})
	mux.HandleFunc("/download/{n}", func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		n, _ := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if r.URL.Query().Get("cl") != "" {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Trailer", "X-Checksum")
		h := sha256.New()
		io.Copy(io.MultiWriter(w, h), io.LimitReader(pattern{}, n))
		w.Header().Set("X-Checksum", hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-b.hold:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		serveEchoWebSocket(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b.addr = netip.MustParseAddrPort(ln.Addr().String())
	b.srv = &http.Server{Handler: mux, Protocols: protos, ConnState: func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			b.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			b.open.Add(-1)
		}
	}}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// pattern is an endless deterministic byte stream.
type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7 + i>>8)
	}
	return len(p), nil
}

// serveEchoWebSocket is a minimal RFC 6455 server: it completes the
// handshake by hijacking and echoes unmasked text frames of up to 125
// bytes back to the client until a close frame.
func serveEchoWebSocket(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "not a websocket", 400)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	brw.Flush()
	for {
		op, payload, err := readWSFrame(brw.Reader)
		if err != nil || op == 8 {
			return
		}
		brw.Write([]byte{0x80 | op, byte(len(payload))})
		brw.Write(payload)
		brw.Flush()
	}
}

// readWSFrame reads one small frame, unmasking it.
func readWSFrame(br *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	op = h[0] & 0x0f
	n := int(h[1] & 0x7f)
	if n > 125 {
		return 0, nil, fmt.Errorf("frame too long")
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err = io.ReadFull(br, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(br, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
	}
	return op, payload, nil
}

// writeWSFrame writes one masked client frame.
func writeWSFrame(w io.Writer, op byte, payload []byte) error {
	mask := [4]byte{1, 2, 3, 4}
	frame := []byte{0x80 | op, 0x80 | byte(len(payload))}
	frame = append(frame, mask[:]...)
	for i, c := range payload {
		frame = append(frame, c^mask[i%4])
	}
	_, err := w.Write(frame)
	return err
}

// testProxy is a proxy in front of backends, served on loopback by
// net/http (NewServer) or by Server.
type testProxy struct {
	h        *HTTP
	pool     *balancer.Pool
	srv      *http.Server // net/http front-end, or nil
	fast     *Server      // Server front-end, or nil
	url      string
	addr     string
	shutdown func(context.Context) error
}

// frontEnd names the client-facing server a test runs the proxy behind.
type frontEnd string

const (
	netHTTP    frontEnd = "net-http"
	fastServer frontEnd = "server"
	// goServer is Server on a listener that is not a *net.TCPListener:
	// a goroutine per connection, never parked.
	goServer frontEnd = "server-goroutines"
)

// plainListener hides a *net.TCPListener's type.
type plainListener struct{ net.Listener }

// forEachFrontEnd runs test once behind each front-end.
func forEachFrontEnd(t *testing.T, test func(t *testing.T, fe frontEnd)) {
	for _, fe := range []frontEnd{netHTTP, fastServer, goServer} {
		t.Run(string(fe), func(t *testing.T) { test(t, fe) })
	}
}

// startProxy starts a proxy over backends with cfg (its Pool is filled in
// when nil), served by net/http. It is stopped at cleanup.
func startProxy(t testing.TB, cfg HTTPConfig, backends ...*testBackend) *testProxy {
	t.Helper()
	return startProxyFE(t, netHTTP, cfg, backends...)
}

// startProxyFE is startProxy behind the front-end fe.
func startProxyFE(t testing.TB, fe frontEnd, cfg HTTPConfig, backends ...*testBackend) *testProxy {
	t.Helper()
	if cfg.Pool == nil {
		cfg.Pool = balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
		var bs []balancer.Backend
		for _, b := range backends {
			bs = append(bs, balancer.Backend{Addr: b.addr})
		}
		require.NoError(t, cfg.Pool.Set(bs))
	}
	h, err := NewHTTP(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &testProxy{h: h, pool: cfg.Pool, url: "http://" + ln.Addr().String(), addr: ln.Addr().String()}
	if fe == goServer {
		ln, fe = plainListener{ln}, fastServer
	}
	if fe == fastServer {
		srv := newServer(t, ServerConfig{Handler: h})
		p.fast = srv
		p.shutdown = srv.Shutdown
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.Serve(context.Background(), ln)
		}()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			srv.Shutdown(ctx)
			<-served
			h.Close()
			cfg.Pool.Close()
		})
		return p
	}
	srv := netHTTPServer(h)
	p.srv = srv
	p.shutdown = srv.Shutdown
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		h.Close()
		cfg.Pool.Close()
	})
	return p
}

// netHTTPServer is an http.Server for a proxy facing clients: a bound on
// reading heads, and HTTP/1.1 plus HTTP/2 (with TLS, and h2c with prior
// knowledge).
func netHTTPServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, Protocols: &p}
}

// testClient returns a keep-alive client closed at cleanup.
func testClient(t testing.TB, conns int) *http.Client {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// get fetches url and returns the status, body and header; it fails the
// test on a transport error, so call it from the test's goroutine only
// (goroutines use fetch and report errors).
func get(t testing.TB, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	code, body, hdr, err := fetch(c, url)
	require.NoError(t, err)
	return code, body, hdr
}

// fetch fetches url and returns the status, body and header, or an error;
// it is safe in any goroutine.
func fetch(c *http.Client, url string) (int, string, http.Header, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", nil, err
	}
	return resp.StatusCode, string(body), resp.Header, nil
}

// rawRoundTrip sends raw bytes on a new connection to addr and returns
// everything read until the peer closes or 5 s pass.
func rawRoundTrip(t testing.TB, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	out, _ := io.ReadAll(c)
	return string(out)
}

// rawBackend is a TCP server answering every connection with a fixed
// byte string after reading the request head, then closing.
func rawBackend(t testing.TB, answer string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(c, answer)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}
