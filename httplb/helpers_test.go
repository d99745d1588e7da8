package httplb_test

import (
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is an HTTP server on loopback that counts its requests.
type backend struct {
	addr netip.AddrPort
	srv  *http.Server
	hits atomic.Int64
}

// startBackend serves h on a free loopback port until the test ends.
func startBackend(t testing.TB, h http.HandlerFunc) *backend {
	t.Helper()
	return startBackendWith(t, h, nil)
}

// startBackendWith is startBackend with a hook that sets up the server
// before it serves.
func startBackendWith(t testing.TB, h http.HandlerFunc, setup func(*http.Server)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &backend{addr: netip.MustParseAddrPort(ln.Addr().String())}
	b.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h(w, r)
	})}
	if setup != nil {
		setup(b.srv)
	}
	go b.srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	require.NoError(t, ln.Close())
	return addr
}

// newPool returns a round-robin pool of addrs.
func newPool(t testing.TB, addrs ...netip.AddrPort) *balancer.Pool {
	t.Helper()
	return newPoolWith(t, roundrobin.Builder{}, addrs...)
}

func newPoolWith(t testing.TB, b balancer.Builder, addrs ...netip.AddrPort) *balancer.Pool {
	t.Helper()
	pool := balancer.MustNew(balancer.Config{Name: "fleet", Builder: b})
	t.Cleanup(func() { pool.Close() })
	var bs []balancer.Backend
	for _, a := range addrs {
		bs = append(bs, balancer.Backend{Addr: a})
	}
	require.NoError(t, pool.Set(bs))
	return pool
}

func ok(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) } //nolint:errcheck // test handler
