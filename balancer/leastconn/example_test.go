package leastconn_test

import (
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/leastconn"
)

func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: leastconn.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.12:80"), Weight: 4},
	})
	// Work in flight: 3, 1 and 6. Costs (in-flight+1)/weight: 4, 2, 1.75.
	for i, n := range []int{3, 1, 6} {
		for range n {
			pool.Endpoints()[i].Start()
		}
	}
	ep, err := pool.Pick(balancer.PickInfo{})
	if err != nil {
		panic(err)
	}
	fmt.Println(ep.Addr())
	ep.Start() // the caller sends work there...
	// ...and calls ep.Done(err, latency) when it ends.

	ep, _ = pool.Pick(balancer.PickInfo{}) // 198.18.0.12 now costs 2 too: a tie
	fmt.Println(ep.Addr() == netip.MustParseAddrPort("198.18.0.11:80") || ep.Addr() == netip.MustParseAddrPort("198.18.0.12:80"))
	// Output:
	// 198.18.0.12:80
	// true
}
