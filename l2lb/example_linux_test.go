package l2lb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/l2lb"
)

// A balancer for one TCP service on eth0. Health events reach the data
// plane through the pool: a health.Checker driving the pool (Drive, or
// Subscribe with SetHealthy) is all the wiring needed.
func ExampleNew() {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.3:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.4:80"), Weight: 2},
	})
	bal, err := l2lb.New(l2lb.Config{
		Interface: "eth0",
		Services:  []l2lb.Service{{VIP: netip.MustParseAddrPort("198.18.0.100:80"), Pool: pool}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer bal.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bal.Sync(ctx); err != nil { // backend MACs resolved, maps written
		log.Fatal(err)
	}
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.4:80"), false) // new flows move at once
	st, _ := bal.Stats()
	fmt.Println(st.Mode, st.Forwarded)
}

// Checking a backend before putting it in service. In a lab, pass the
// host's Do method to run the check inside the backend's namespace.
func ExampleCheckBackend() {
	err := l2lb.CheckBackend(nil, netip.MustParseAddr("198.18.0.100"))
	var se *l2lb.SetupError
	if errors.As(err, &se) {
		for _, p := range se.Problems {
			fmt.Println(p)
		}
	}
}
