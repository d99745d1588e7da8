package balancer_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// A Pool publishes a snapshot of its ready backends; hash policies keep a
// key on the same backend until that backend leaves the ready set.
func ExamplePool() {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.12:80")},
	})
	client := balancer.WithKey(balancer.HashAddr(netip.MustParseAddr("203.0.113.7")))

	ep, _ := pool.Pick(client)
	fmt.Println("ready:", len(pool.Snapshot().Ready))

	// Track the work so load-aware policies see it.
	ep.Start()
	ep.Done(nil, 3*time.Millisecond)

	// Draining the chosen backend moves the key elsewhere; undraining
	// brings it back.
	pool.SetDraining(ep.Addr(), true)
	moved, _ := pool.Pick(client)
	fmt.Println("ready:", len(pool.Snapshot().Ready), "moved:", moved.Addr() != ep.Addr())
	pool.SetDraining(ep.Addr(), false)
	back, _ := pool.Pick(client)
	fmt.Println("back:", back.Addr() == ep.Addr(), "requests:", ep.Requests())
	// Output:
	// ready: 3
	// ready: 2 moved: true
	// back: true requests: 1
}

// An empty pool, or one whose members are all down, picks ErrNoBackend.
func ExamplePool_noBackend() {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	_ = pool.Set([]balancer.Backend{{Addr: netip.MustParseAddrPort("198.18.0.10:80")}})
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.10:80"), false)
	_, err := pool.Pick(balancer.PickInfo{})
	fmt.Println(err)
	// Output:
	// balancer: no healthy backend
}

// HashFlow keys a pick by a connection's 5-tuple, as kernel data planes do.
func ExampleHashFlow() {
	src := netip.MustParseAddrPort("203.0.113.7:51234")
	dst := netip.MustParseAddrPort("198.18.0.1:443")
	k1 := balancer.HashFlow(6, src, dst)
	k2 := balancer.HashFlow(6, src, dst)
	fmt.Println(k1 == k2, k1 == balancer.HashFlow(17, src, dst))
	// Output: true false
}
