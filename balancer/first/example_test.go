package first_test

import (
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/first"
)

func Example() {
	primary := netip.MustParseAddrPort("198.18.0.10:5432")
	standby := netip.MustParseAddrPort("198.18.0.11:5432")
	pool := balancer.MustNew(balancer.Config{Builder: first.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{{Addr: primary}, {Addr: standby}})

	ep, _ := pool.Pick(balancer.PickInfo{})
	fmt.Println(ep.Addr())
	pool.SetHealthy(primary, false) // e.g. from a health.Checker event
	ep, _ = pool.Pick(balancer.PickInfo{})
	fmt.Println(ep.Addr())
	// Output:
	// 198.18.0.10:5432
	// 198.18.0.11:5432
}
