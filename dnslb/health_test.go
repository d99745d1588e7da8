package dnslb

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbkit/lbkit/health"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHealthCheckerDrivesAnswers: a health.Checker follows the service's
// pool: a backend whose probe fails leaves the answers and returns once
// it passes again, and a member added to the pool is probed and, once
// healthy, answered, with no other call.
func TestHealthCheckerDrivesAnswers(t *testing.T) {
	a1, a2 := netip.MustParseAddrPort("198.18.0.1:80"), netip.MustParseAddrPort("198.18.0.2:80")
	a3 := netip.MustParseAddrPort("198.18.0.3:80")
	pool := newPool(t, nil, be(a1.String()), be(a2.String()))
	var a2down, a3down atomic.Bool
	a3down.Store(true)
	probe := health.ProberFunc(func(_ context.Context, addr netip.AddrPort) (health.Report, error) {
		if addr == a2 && a2down.Load() || addr == a3 && a3down.Load() {
			return health.Report{}, errors.New("connection refused")
		}
		return health.Report{}, nil
	})
	chk, err := health.New(health.Config{Logger: quiet})
	require.NoError(t, err)
	defer chk.Close()
	require.NoError(t, chk.Follow(pool, health.Template{Probe: probe, Interval: 10 * time.Millisecond, Rise: 1, Fall: 1}))
	_, addr := startServer(t, Config{Services: []Service{{Name: "svc.example.test.", Pool: pool}}})

	answers := func(want ...string) func() bool {
		return func() bool {
			return assert.ObjectsAreEqual(want, sorted(addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA))))
		}
	}
	require.Eventually(t, answers("198.18.0.1", "198.18.0.2"), 20*time.Second, 10*time.Millisecond)
	a2down.Store(true)
	require.Eventually(t, answers("198.18.0.1"), 20*time.Second, 10*time.Millisecond, "failed probe removes the backend")
	a2down.Store(false)
	require.Eventually(t, answers("198.18.0.1", "198.18.0.2"), 20*time.Second, 10*time.Millisecond, "passing probe brings it back")

	require.NoError(t, pool.Add(be(a3.String())))
	assert.Equal(t, []string{"198.18.0.1", "198.18.0.2"}, sorted(addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA))),
		"a new member is not answered before a probe passes")
	a3down.Store(false)
	require.Eventually(t, answers("198.18.0.1", "198.18.0.2", "198.18.0.3"), 20*time.Second, 10*time.Millisecond,
		"a member added to the pool is probed and answered")
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}
