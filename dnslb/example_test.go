package dnslb_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"slices"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/dnslb"
	"github.com/miekg/dns"
)

// A server for example.test. whose www name answers the ready backends
// of a pool; a backend that fails leaves the answers at once.
func Example() {
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	for _, a := range []string{"198.18.0.1:443", "198.18.0.2:443"} {
		pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	srv, err := dnslb.New(dnslb.Config{
		Zones: []dnslb.Zone{{Origin: "example.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n" +
			"@ 3600 IN NS ns1\n" +
			"ns1 3600 IN A 127.0.0.1\n"}},
		Services: []dnslb.Service{{Name: "www.example.test.", Pool: pool}},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	udp, tcp, err := dnslb.Listen(ctx, "127.0.0.1:0", 1)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, udp, []net.Listener{tcp}) }()

	ask := func(name string) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, err := dns.Exchange(m, tcp.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		var got []string
		for _, rr := range r.Answer {
			got = append(got, rr.(*dns.A).A.String())
		}
		slices.Sort(got)
		fmt.Println(name, dns.RcodeToString[r.Rcode], got)
	}
	ask("www.example.test.")
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:443"), false)
	ask("www.example.test.")
	ask("mail.example.test.")

	cancel()
	<-done
	// Output:
	// www.example.test. NOERROR [198.18.0.1 198.18.0.2]
	// www.example.test. NOERROR [198.18.0.2]
	// mail.example.test. NXDOMAIN []
}
