package ewma_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ewma"
)

func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: ewma.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80")},
	})
	eps := pool.Endpoints()
	// Front-ends report each unit of work: Start, then Done with its
	// latency. Here the first backend answered in 80 ms, the second in 20.
	now := time.Now()
	eps[0].ObserveLatency(now, 80*time.Millisecond)
	eps[1].ObserveLatency(now, 20*time.Millisecond)
	// Costs: 80 × (0+1) vs 20 × (2+1) with two requests in flight on the
	// second.
	eps[1].Start()
	eps[1].Start()
	ep, _ := pool.Pick(balancer.PickInfo{})
	fmt.Println(ep.Addr())
	eps[1].Done(nil, 0)
	ep, _ = pool.Pick(balancer.PickInfo{}) // 80 vs 40
	fmt.Println(ep.Addr())
	// Output:
	// 198.18.0.11:80
	// 198.18.0.11:80
}
