package daemon

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/certs/certstest"
	"github.com/lbkit/lbkit/internal/testnet"
)

// HTTP and redirect listeners terminate TLS: HTTP/1.1 through lbkit's own
// front-ends by default, HTTP/2 through net/http with http2: true.
func TestTLSListeners(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	certFile, keyFile, _ := ca.Issue(t, dir, "web", "web.example.test")
	be := backends(t, 1)
	free := testnet.FreeAddrs(t, 3)
	text := fmt.Sprintf(`
pools:
  - name: web
    members: [{addr: %s}]
    health: {type: none}
listeners:
  - {name: h1, type: http, addr: %s, pool: web, tls: {cert_file: %s, key_file: %s}}
  - {name: h2, type: http, addr: %s, pool: web, tls: {cert_file: %s, key_file: %s, http2: true}}
  - {name: mirror, type: redirect, addr: %s, pool: web, tls: {cert_file: %s, key_file: %s}}
`, be[0], free[0], certFile, keyFile, free[1], certFile, keyFile, free[2], certFile, keyFile)
	cfg, err := config.Parse("tls.yaml", []byte(text))
	require.NoError(t, err)
	d := New(Options{AdminAddr: "off", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, d.Start(cfg))
	defer d.Close()

	client := &http.Client{Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: "web.example.test"}}}
	for _, tc := range []struct {
		addr  string
		major int
		code  int
	}{{free[0], 1, 200}, {free[1], 2, 200}, {free[2], 1, 302}} {
		resp, err := client.Get("https://" + tc.addr + "/x")
		require.NoError(t, err, tc.addr)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, tc.code, resp.StatusCode, tc.addr)
		assert.Equal(t, tc.major, resp.ProtoMajor, "%s: HTTP/%d", tc.addr, resp.ProtoMajor)
		if tc.code == 200 {
			assert.Equal(t, "b1", string(body))
		}
	}
}
