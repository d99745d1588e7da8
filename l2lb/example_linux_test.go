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
// plane through the pool: a health.Checker following the pool
// (Checker.Follow) is all the wiring needed. One backend's MAC is given
// in its metadata, the other's comes from the neighbour table.
func ExampleBalancer_Serve() {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: maglev.Builder{}})
	defer pool.Close()
	pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.3:80"), Meta: map[string]string{l2lb.MetaMAC: "02:00:5e:00:53:03"}},
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
	go bal.Serve(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bal.Sync(ctx); err != nil { // attached, MACs resolved, maps written
		log.Fatal(err)
	}
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.4:80"), false) // new flows move at once

	// Another service while serving: one flip of the VIP table.
	if err := bal.AddService(l2lb.Service{VIP: netip.MustParseAddrPort("198.18.0.100:53"), Proto: l2lb.UDP,
		Pool: pool, Key: balancer.MustParseKey("client/24")}); err != nil {
		log.Fatal(err)
	}
	st, _ := bal.Stats()
	ct, _ := bal.ConnTable()
	fmt.Println(st.Mode, st.Forwarded, st.ConnLost, ct.Entries, ct.Size)
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
