package roundrobin_test

import (
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80"), Weight: 5}, // ignored
		{Addr: netip.MustParseAddrPort("198.18.0.12:80")},
	})
	counts := map[netip.AddrPort]int{}
	for range 3000 {
		ep, err := pool.Pick(balancer.PickInfo{})
		if err != nil {
			panic(err)
		}
		counts[ep.Addr()]++
	}
	// Each backend gets a third, to within the number of counter shards.
	for _, ep := range pool.Endpoints() {
		fmt.Println(ep.Addr(), (counts[ep.Addr()]+50)/100*100)
	}
	// Output:
	// 198.18.0.10:80 1000
	// 198.18.0.11:80 1000
	// 198.18.0.12:80 1000
}
