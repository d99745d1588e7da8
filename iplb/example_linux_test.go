package iplb_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/iplb"
)

// A TCP service in gateway mode: the balancer follows its pool, so
// whatever changes the pool (a health checker, discovery, the code
// below) reaches the kernel by itself. It needs root, so it is compiled
// but not run; examples/iplb runs a whole lab.
func ExampleBalancer_Serve() {
	backends := []balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.2.11:8080")},
		{Addr: netip.MustParseAddrPort("198.18.2.12:8080"), Weight: 2},
	}
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	if err := pool.Set(backends); err != nil {
		log.Fatal(err)
	}
	lb, err := iplb.New(iplb.Config{Services: []iplb.Service{{
		Name: "web",
		VIP:  netip.MustParseAddrPort("198.19.0.10:80"),
		Pool: pool,
	}}})
	if err != nil {
		log.Fatal(err) // not root, or not Linux
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go lb.Serve(ctx)

	// Drain a backend: new flows avoid it once Sync (or the balancer's
	// control loop) has applied the change; open ones finish.
	pool.SetDraining(backends[0].Addr, true)
	if err := lb.Sync(ctx); err != nil {
		log.Fatal(err)
	}
	stats, _ := lb.Stats()
	for _, b := range stats[0].Backends {
		fmt.Println(b.Addr, b.Slots, b.Flows)
	}
	// Serve more at run time, in one atomic batch.
	if err := lb.AddService(iplb.Service{Name: "dns", VIP: netip.MustParseAddrPort("198.19.0.10:53"), Proto: iplb.UDP, Pool: pool}); err != nil {
		log.Fatal(err)
	}
}
