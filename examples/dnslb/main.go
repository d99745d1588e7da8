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
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
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
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dnslb example:", err)
		os.Exit(1)
	}
}

// run serves the zone on loopback, asks it the example's questions and
// writes what it sees to w.
func run(w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pool, err := balancer.New(balancer.Config{Name: "www", Builder: weighted.Builder{}})
	if err != nil {
		return err
	}
	defer pool.Close()
	for i, wt := range []uint32{1, 1, 4} {
		addr := netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:443", i+1))
		if err := pool.Add(balancer.Backend{Addr: addr, Weight: wt}); err != nil {
			return err
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
		return err
	}
	udp, tcp, err := dnslb.Listen(ctx, "127.0.0.1:0", 1) // one socket: one rotation
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, udp, []net.Listener{tcp}) }()
	// An early return closes the server; the normal path shuts it down
	// gracefully at the end and reports how that went.
	stopped := false
	defer func() {
		if !stopped {
			srv.Close()
			<-served
		}
	}()
	addr := tcp.Addr().String()
	fmt.Fprintln(w, "serving example.test. on", addr, "(UDP and TCP)")

	client := &dns.Client{Timeout: 2 * time.Second}
	exchange := func(name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := client.ExchangeContext(ctx, m, addr)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", name, dns.TypeToString[qtype], err)
		}
		return r, nil
	}
	ask := func(name string, qtype uint16) error {
		r, err := exchange(name, qtype)
		if err != nil {
			return err
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, fmt.Sprintf("%s (ttl %d)", a.A, a.Hdr.Ttl))
			}
		}
		fmt.Fprintf(w, "%-22s %-5s %-8s aa=%-5v %s\n", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode],
			r.Authoritative, strings.Join(got, ", "))
		return nil
	}

	fmt.Fprintln(w, "\nall ready backends, rotated per query:")
	for range 3 {
		if err := ask("www.example.test.", dns.TypeA); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "\none address picked by the pool's weighted round robin (198.18.0.3 has weight 4 of 6):")
	counts := map[string]int{}
	for range 600 {
		r, err := exchange("one.example.test.", dns.TypeA)
		if err != nil {
			return err
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("one.example.test. A: %d answers, want 1", len(r.Answer))
		}
		a, ok := r.Answer[0].(*dns.A)
		if !ok {
			return fmt.Errorf("one.example.test. A: answer %v is not an A record", r.Answer[0])
		}
		counts[a.A.String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %d of 600\n", k, counts[k])
	}

	fmt.Fprintln(w, "\n198.18.0.2 fails its health check:")
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.2:443"), false)
	if err := ask("www.example.test.", dns.TypeA); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nnegative answers and names outside the zone:")
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"www.example.test.", dns.TypeAAAA}, // NODATA: no IPv6 backend
		{"nope.example.test.", dns.TypeA},   // NXDOMAIN
		{"example.org.", dns.TypeA},         // REFUSED: not ours, no recursion
	} {
		if err := ask(q.name, q.qtype); err != nil {
			return err
		}
	}

	st := srv.Stats()
	fmt.Fprintf(w, "\nserved %d queries, sent %d responses\n", st.Queries, st.Responses)
	stopped = true
	if err := srv.Shutdown(ctx); err != nil {
		<-served
		return err
	}
	return <-served
}
