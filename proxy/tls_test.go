package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/internal/certs"
	"github.com/lbkit/lbkit/internal/certs/certstest"
)

// tlsSetup makes a certificate store for "proxy.test" and a client
// configuration that trusts it.
func tlsSetup(t *testing.T) (*certs.Store, *tls.Config) {
	ca := certstest.NewCA(t)
	cf, kf, _ := ca.Issue(t, t.TempDir(), "proxy", "proxy.test")
	st, err := certs.New(certs.Config{Pairs: []certs.Pair{{CertFile: cf, KeyFile: kf}}})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st, &tls.Config{RootCAs: ca.Pool, ServerName: "proxy.test"}
}

func tlsHandler(t *testing.T, backends ...*testBackend) *HTTP {
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	var bs []balancer.Backend
	for _, b := range backends {
		bs = append(bs, balancer.Backend{Addr: b.addr})
	}
	require.NoError(t, pool.Set(bs))
	h, err := NewHTTP(HTTPConfig{Pool: pool})
	require.NoError(t, err)
	t.Cleanup(func() { h.Close(); pool.Close() })
	return h
}

func tlsClient(t *testing.T, ccfg *tls.Config, h2 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: ccfg, ForceAttemptHTTP2: h2, DisableCompression: true, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// checkUpload streams a body of unknown length (chunked in HTTP/1.1,
// DATA frames in HTTP/2) through the proxy and checks the backend's hash.
func checkUpload(t *testing.T, c *http.Client, url string, wantMajor int) {
	pr, pw := io.Pipe()
	go func() {
		for i := range 64 {
			fmt.Fprintf(pw, "%08d", i)
			io.Copy(pw, io.LimitReader(pattern{}, 8<<10))
		}
		pw.Close()
	}()
	h := sha256.New()
	for i := range 64 {
		fmt.Fprintf(h, "%08d", i)
		io.Copy(h, io.LimitReader(pattern{}, 8<<10))
	}
	resp, err := c.Post(url+"/upload", "application/octet-stream", pr)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, wantMajor, resp.ProtoMajor)
	assert.Equal(t, fmt.Sprintf("%d %x ", 64*(8+8<<10), h.Sum(nil)), string(body))
}

// checkDownload fetches a 1 MiB body and checks its length.
func checkDownload(t *testing.T, c *http.Client, url string, wantMajor int) {
	resp, err := c.Get(url + "/download/1048576")
	require.NoError(t, err)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, wantMajor, resp.ProtoMajor)
	assert.EqualValues(t, 1<<20, n)
}

// checkStreamed reads a server-sent event while the backend's handler
// still waits: the response is streamed, not buffered.
func checkStreamed(t *testing.T, c *http.Client, url string, b *testBackend, wantMajor int) {
	resp, err := c.Get(url + "/sse")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, wantMajor, resp.ProtoMajor)
	buf := make([]byte, len("data: 0\n\n"))
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	assert.Equal(t, "data: 0\n\n", string(buf))
	close(b.hold) // let the handler finish
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "data: 1\n\ndata: 2\n\n", string(rest))
}

// proxy.Server, which speaks only HTTP/1.1, terminates TLS when given a
// TLS listener: keep-alive requests, streamed bodies both ways, and
// ALPN settling on http/1.1 for a client that offers h2.
func TestServerOverTLS(t *testing.T) {
	st, ccfg := tlsSetup(t)
	b := startBackend(t, "a")
	srv := newServer(t, ServerConfig{Handler: tlsHandler(t, b)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), tls.NewListener(ln, st.ConfigALPN("http/1.1"))) }()
	url := "https://" + ln.Addr().String()

	c := tlsClient(t, ccfg, true)
	for range 5 {
		resp, err := c.Get(url + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "a", string(body))
		assert.Equal(t, 1, resp.ProtoMajor)
		require.NotNil(t, resp.TLS)
		assert.Equal(t, "http/1.1", resp.TLS.NegotiatedProtocol)
		assert.Equal(t, uint16(tls.VersionTLS13), resp.TLS.Version)
	}
	checkUpload(t, c, url, 1)
	checkDownload(t, c, url, 1)
	checkStreamed(t, c, url, b, 1)

	// Plain HTTP on the TLS port gets no answer from the proxy.
	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	got, _ := io.ReadAll(conn)
	conn.Close()
	assert.False(t, strings.Contains(string(got), "200 OK"), "no plain-text answer on a TLS listener")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))
	require.NoError(t, <-served)
}

// proxy.HTTP under net/http with the store's configuration serves HTTP/2
// to clients that offer it, bodies streamed both ways, and HTTP/1.1 to
// those that do not.
func TestHTTPServesH2OverTLS(t *testing.T) {
	st, ccfg := tlsSetup(t)
	b := startBackend(t, "a")
	hs := netHTTPServer(tlsHandler(t, b))
	hs.TLSConfig = st.Config()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	url := "https://" + ln.Addr().String()

	c := tlsClient(t, ccfg, true)
	resp, err := c.Get(url + "/headers")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.Equal(t, "h2", resp.TLS.NegotiatedProtocol)
	assert.Contains(t, string(body), "X-Forwarded-Proto: https", "the backend learns the client used TLS")
	checkUpload(t, c, url, 2)
	checkDownload(t, c, url, 2)
	checkStreamed(t, c, url, b, 2)

	// ccfg now offers h2 too: the first transport added it.
	h1 := tlsClient(t, &tls.Config{RootCAs: ccfg.RootCAs, ServerName: ccfg.ServerName, NextProtos: []string{"http/1.1"}}, false)
	resp, err = h1.Get(url + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 1, resp.ProtoMajor)
	assert.Equal(t, "http/1.1", resp.TLS.NegotiatedProtocol)
}
