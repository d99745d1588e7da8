// Command dnslb runs lbkit's authoritative DNS load balancer on loopback
// for a few queries and exits: it serves www.example.test from a pool of
// three backends (addresses from 198.18.0.0/15, never contacted), shows
// the rotation of answers, a pick by the pool's weighted round robin, a
// backend leaving the answers when it turns unhealthy, and the negative
// answers, then shuts down gracefully.
package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/dnslb"
	"github.com/miekg/dns"
)

const zone = `
$TTL 300
@   IN SOA ns1 hostmaster 1 3600 600 86400 60
@   IN NS  ns1
ns1 IN A   127.0.0.1
`

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pool := balancer.MustNew(balancer.Config{Name: "www", Builder: weighted.Builder{}})
	defer pool.Close()
	for i, w := range []uint32{1, 1, 4} {
		addr := netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:443", i+1))
		if err := pool.Add(balancer.Backend{Addr: addr, Weight: w}); err != nil {
			log.Fatal(err)
		}
	}
	srv, err := dnslb.New(dnslb.Config{
		Zones: []dnslb.Zone{{Origin: "example.test.", Records: zone}},
		Services: []dnslb.Service{
			{Name: "www.example.test.", Pool: pool},
			{Name: "one.example.test.", Pool: pool, Policy: dnslb.PolicyWeighted, Count: 1, TTL: 10 * time.Second},
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	udp, tcp, err := dnslb.Listen(ctx, "127.0.0.1:0", 1) // one socket: one rotation
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, udp, []net.Listener{tcp}) }()
	addr := tcp.Addr().String()
	fmt.Println("serving example.test. on", addr, "(UDP and TCP)")

	ask := func(name string, qtype uint16) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.ExchangeContext(ctx, m, addr)
		if err != nil {
			log.Fatal(err)
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, fmt.Sprintf("%s (ttl %d)", a.A, a.Hdr.Ttl))
			}
		}
		fmt.Printf("%-22s %-5s %-8s aa=%-5v %s\n", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode],
			r.Authoritative, strings.Join(got, ", "))
	}

	fmt.Println("\nall ready backends, rotated per query:")
	for range 3 {
		ask("www.example.test.", dns.TypeA)
	}
	fmt.Println("\none address picked by the pool's weighted round robin (198.18.0.3 has weight 4 of 6):")
	counts := map[string]int{}
	for range 600 {
		m := new(dns.Msg)
		m.SetQuestion("one.example.test.", dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).ExchangeContext(ctx, m, addr)
		if err != nil {
			log.Fatal(err)
		}
		counts[r.Answer[0].(*dns.A).A.String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Printf("  %s: %d of 600\n", k, counts[k])
	}

	fmt.Println("\n198.18.0.2 fails its health check:")
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.2:443"), false)
	ask("www.example.test.", dns.TypeA)

	fmt.Println("\nnegative answers and names outside the zone:")
	ask("www.example.test.", dns.TypeAAAA) // NODATA: no IPv6 backend
	ask("nope.example.test.", dns.TypeA)   // NXDOMAIN
	ask("example.org.", dns.TypeA)         // REFUSED: not ours, no recursion

	st := srv.Stats()
	fmt.Printf("\nserved %d queries, sent %d responses\n", st.Queries, st.Responses)
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	if err := <-served; err != nil {
		log.Fatal(err)
	}
}
