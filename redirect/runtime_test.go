package redirect

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// TestRuntimeChange: base URLs and members change with Pool.Set/Add/
// Remove while a keep-alive connection is open, behind Server and under
// net/http; the connection keeps working and sees each change at once.
func TestRuntimeChange(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.10:80")
	b := netip.MustParseAddrPort("198.18.0.11:80")
	meta := func(u string) map[string]string { return map[string]string{MetaURL: u} }
	steps := []struct {
		name   string
		change func(p *balancer.Pool) error
		want   string
	}{
		{"initial", func(p *balancer.Pool) error { return nil }, "http://a.example/x"},
		{"URL changed", func(p *balancer.Pool) error {
			return p.Set([]balancer.Backend{{Addr: a, Meta: meta("https://a2.example/pub")}})
		}, "https://a2.example/pub/x"},
		{"member added, first removed", func(p *balancer.Pool) error {
			if err := p.Add(balancer.Backend{Addr: b, Meta: meta("http://b.example")}); err != nil {
				return err
			}
			p.Remove(a)
			return nil
		}, "http://b.example/x"},
		{"URL dropped: the default", func(p *balancer.Pool) error {
			return p.Set([]balancer.Backend{{Addr: b}})
		}, "http://198.18.0.11:80/x"},
	}
	newHandler := func(t *testing.T) (*Handler, *balancer.Pool) {
		pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: roundrobin.Builder{}})
		t.Cleanup(func() { pool.Close() })
		require.NoError(t, pool.Add(balancer.Backend{Addr: a, Meta: meta("http://a.example")}))
		h, err := New(Config{Pool: pool})
		require.NoError(t, err)
		return h, pool
	}

	t.Run("Server", func(t *testing.T) {
		h, pool := newHandler(t)
		conn, err := net.Dial("tcp", redirStartServer(t, h))
		require.NoError(t, err)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		for _, s := range steps {
			require.NoError(t, s.change(pool), s.name)
			_, err := io.WriteString(conn, "GET /x HTTP/1.1\r\nHost: lb\r\n\r\n")
			require.NoError(t, err, s.name)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err, "%s: the connection survived", s.name)
			resp.Body.Close()
			assert.Equal(t, s.want, resp.Header.Get("Location"), s.name)
			assert.False(t, resp.Close, s.name)
		}
	})
	t.Run("Handler", func(t *testing.T) {
		h, pool := newHandler(t)
		srv := httptest.NewServer(h)
		defer srv.Close()
		tr := &http.Transport{MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		for i, s := range steps {
			require.NoError(t, s.change(pool), s.name)
			reused := false
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
			require.NoError(t, err)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
			}))
			resp, err := c.Do(req)
			require.NoError(t, err, s.name)
			resp.Body.Close()
			assert.Equal(t, s.want, resp.Header.Get("Location"), s.name)
			assert.Equal(t, i > 0, reused, "%s: the keep-alive connection is reused", s.name)
		}
	})
}
