package iplb_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/iplb"
)

// A TCP service in gateway mode whose pool a health checker keeps up to
// date: the balancer applies every change to the kernel by itself. It
// needs root, so it is compiled but not run; examples/iplb runs a whole
// lab.
func ExampleBalancer_AddService() {
	lb, err := iplb.New(iplb.Config{})
	if err != nil {
		log.Fatal(err) // not root, or not Linux
	}
	defer lb.Close()

	backends := []balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.2.11:8080")},
		{Addr: netip.MustParseAddrPort("198.18.2.12:8080"), Weight: 2},
	}
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	if err := pool.Set(backends); err != nil {
		log.Fatal(err)
	}
	chk, err := health.New(health.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer chk.Close()
	for _, b := range backends {
		chk.SetTarget(health.Target{Addr: b.Addr, Probe: health.TCP{}, Interval: time.Second, Initial: health.Healthy})
	}
	defer chk.Drive(pool)()

	if _, err := lb.AddService(iplb.Service{
		Name: "web",
		VIP:  netip.MustParseAddrPort("198.19.0.10:80"),
		Pool: pool,
	}); err != nil {
		log.Fatal(err)
	}
	// Drain a backend: new flows avoid it once Sync (or the balancer's
	// own goroutine) has applied the change; open ones finish.
	pool.SetDraining(backends[0].Addr, true)
	if err := lb.Sync(context.Background()); err != nil {
		log.Fatal(err)
	}
	stats, _ := lb.Stats()
	for _, b := range stats[0].Backends {
		fmt.Println(b.Addr, b.Slots, b.Flows)
	}
}
