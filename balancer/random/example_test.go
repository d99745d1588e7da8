package random_test

import (
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/random"
)

func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: random.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80"), Weight: 1},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80"), Weight: 2},
		{Addr: netip.MustParseAddrPort("198.18.0.12:80"), Weight: 1},
	})
	counts := map[netip.AddrPort]int{}
	for range 40000 {
		ep, err := pool.Pick(balancer.PickInfo{})
		if err != nil {
			panic(err)
		}
		counts[ep.Addr()]++
	}
	// Shares follow the weights; rounded to thousands, the randomness
	// (σ ≈ 90 picks) does not show.
	for _, ep := range pool.Endpoints() {
		fmt.Println(ep.Addr(), (counts[ep.Addr()]+500)/1000*1000)
	}
	// Output:
	// 198.18.0.10:80 10000
	// 198.18.0.11:80 20000
	// 198.18.0.12:80 10000
}
