package redirect

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/certs"
	"github.com/lbkit/lbkit/internal/certs/certstest"
)

// redirect.Server answers over TLS when given a TLS listener, keeping
// connections alive as over plain TCP.
func TestServerOverTLS(t *testing.T) {
	ca := certstest.NewCA(t)
	cf, kf, _ := ca.Issue(t, t.TempDir(), "redir", "redir.test")
	st, err := certs.New(certs.Config{Pairs: []certs.Pair{{CertFile: cf, KeyFile: kf}}})
	require.NoError(t, err)
	defer st.Close()

	h := redirNew(t, Config{Pool: redirPool(t, []tgt{{URL: "http://198.18.0.10:8080"}})})
	s := redirServer(t, ServerConfig{Handler: h})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), tls.NewListener(ln, st.ConfigALPN("http/1.1"))) }()

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: "redir.test"}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := range 3 {
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodGet, "https://"+ln.Addr().String()+"/a/b?c=d", nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusFound, resp.StatusCode)
		assert.Equal(t, "http://198.18.0.10:8080/a/b?c=d", resp.Header.Get("Location"))
		assert.Equal(t, 1, resp.ProtoMajor)
		assert.Equal(t, i > 0, reused, "request %d: one kept-alive TLS connection", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	require.NoError(t, <-done)
}
