package weighted_test

import (
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/weighted"
)

func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: weighted.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80"), Weight: 5},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80"), Weight: 1},
		{Addr: netip.MustParseAddrPort("198.18.0.12:80"), Weight: 1},
	})
	counts := map[netip.AddrPort]int{}
	for range 7000 {
		ep, err := pool.Pick(balancer.PickInfo{})
		if err != nil {
			panic(err)
		}
		counts[ep.Addr()]++
	}
	// Exact shares, to within the number of counter shards.
	for _, ep := range pool.Endpoints() {
		fmt.Println(ep.Addr(), (counts[ep.Addr()]+50)/100*100)
	}
	// Output:
	// 198.18.0.10:80 5000
	// 198.18.0.11:80 1000
	// 198.18.0.12:80 1000
}

// Slots shows the schedule's cycle for effective (float) weights: here a
// backend one third of the way through a slow start from 10%.
func ExamplePicker_Slots() {
	ready := balancertest.ReadyWeights(2*(0.1+0.9*3/10.0), 2, 1)
	p := weighted.Builder{}.Build(ready).(*weighted.Picker)
	fmt.Println(p.Slots())
	// Output: [37 100 50]
}
