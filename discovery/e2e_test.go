package discovery

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/health"
)

// TestFileFeedsCheckedPool runs discovery end to end: a file source feeds
// a pool that a health checker follows. A member written into the file is
// probed and picked once healthy; one that fails its probes is a member
// but never picked; one removed from the file leaves the pool and is no
// longer probed. No call links the file, the pool and the checker but
// Syncer.Run and Checker.Follow.
func TestFileFeedsCheckedPool(t *testing.T) {
	backend := func() netip.AddrPort {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		t.Cleanup(srv.Close)
		return netip.MustParseAddrPort(srv.Listener.Addr().String())
	}
	a, b := backend(), backend()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens there: its probes fail

	path := filepath.Join(t.TempDir(), "web.yaml")
	writeFile(t, path, "- addr: "+a.String()+"\n")

	pool := newPool(t, "web")
	chk, err := health.New(health.Config{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { chk.Close() })
	require.NoError(t, chk.Follow(pool, health.Template{
		Probe:    health.HTTP{},
		Interval: 50 * time.Millisecond,
		Timeout:  time.Second,
		Rise:     1,
		Fall:     1,
	}))
	removed := make(chan netip.AddrPort, 8)
	defer chk.Subscribe(func(e health.Event) {
		if e.Reason == "removed" {
			removed <- e.Target
		}
	})()
	src, err := NewFile(FileConfig{Path: path, Debounce: 10 * time.Millisecond})
	require.NoError(t, err)
	stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{src}, Logger: quiet})
	defer stop()

	readyIs := func(want ...netip.AddrPort) func(*balancer.Pool) bool {
		var w []string
		for _, a := range want {
			w = append(w, a.String())
		}
		slices.Sort(w)
		return func(p *balancer.Pool) bool { return slices.Equal(ready(p), w) }
	}
	picked := func() map[netip.AddrPort]int {
		got := map[netip.AddrPort]int{}
		for range 100 {
			ep, err := pool.Pick(balancer.PickInfo{})
			require.NoError(t, err)
			got[ep.Addr()]++
		}
		return got
	}

	waitFor(t, pool, 10*time.Second, "a ready", readyIs(a))
	assert.Equal(t, map[netip.AddrPort]int{a: 100}, picked())

	// b and the dead address are written into the file: both join the
	// pool unknown, b turns healthy and is picked, the dead one is not.
	writeFile(t, path, "- addr: "+a.String()+"\n- addr: "+b.String()+"\n- addr: "+dead.String()+"\n")
	waitFor(t, pool, 10*time.Second, "a and b ready", readyIs(a, b))
	waitFor(t, pool, 10*time.Second, "the dead member judged", func(p *balancer.Pool) bool {
		ep := p.Endpoint(dead)
		return ep != nil && ep.Health() == balancer.Unhealthy
	})
	assert.Equal(t, []string{a.String(), b.String(), dead.String()}, members(pool))
	got := picked()
	assert.Len(t, got, 2, "a and b are picked, the dead member never: %v", got)
	assert.Zero(t, got[dead])
	assert.ElementsMatch(t, []netip.AddrPort{a, b, dead}, chk.Targets(), "the checker probes every member")

	// b is removed from the file: it leaves the pool and the checker.
	require.NoError(t, os.WriteFile(path, []byte("- addr: "+a.String()+"\n- addr: "+dead.String()+"\n"), 0o644))
	waitMembers(t, pool, 10*time.Second, a.String(), dead.String())
	assert.Equal(t, map[netip.AddrPort]int{a: 100}, picked())
	select {
	case gone := <-removed:
		assert.Equal(t, b, gone)
	case <-time.After(10 * time.Second):
		t.Fatal("the checker did not drop the member that left")
	}
	assert.ElementsMatch(t, []netip.AddrPort{a, dead}, chk.Targets(), "a member that left is no longer probed")
}
