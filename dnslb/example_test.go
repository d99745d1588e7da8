package dnslb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/dnslb"
	"github.com/miekg/dns"
)

// A server for example.test. whose www name answers the ready backends
// of a pool; a backend that fails leaves the answers at once.
func Example() {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}})
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
	udp, tcp, err := dnslb.Listen(context.Background(), "127.0.0.1:0", 1)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- srv.Serve(context.Background(), udp, []net.Listener{tcp}) }()

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

	if err := srv.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("served:", <-done)
	// Output:
	// www.example.test. NOERROR [198.18.0.1 198.18.0.2]
	// www.example.test. NOERROR [198.18.0.2]
	// mail.example.test. NXDOMAIN []
	// served: <nil>
}

// A consistent service answers each client subnet from the pool's
// Maglev table, keyed by the client's /16 here; Update then adds a name
// for the same pool and points a CNAME at it while the server serves.
func ExampleServer_Update() {
	pool := balancer.MustNew(balancer.Config{Name: "api", Builder: maglev.Builder{}})
	defer pool.Close()
	for i := 1; i <= 4; i++ {
		pool.Add(balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 443)})
	}
	zone := func(records string) []dnslb.Zone {
		return []dnslb.Zone{{Origin: "example.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n" + records}}
	}
	api := dnslb.Service{Name: "api.example.test.", Pool: pool, Policy: dnslb.PolicyConsistent,
		Key: balancer.MustParseKey("client/16,48")}
	srv, err := dnslb.New(dnslb.Config{Zones: zone(""), Services: []dnslb.Service{api},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	udp, tcp, err := dnslb.Listen(context.Background(), "127.0.0.1:0", 1)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- srv.Serve(context.Background(), udp, []net.Listener{tcp}) }()

	// answer asks for name as a resolver with EDNS Client Subnet would.
	answer := func(name, subnet string) string {
		p := netip.MustParsePrefix(subnet)
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1,
			SourceNetmask: uint8(p.Bits()), Address: p.Addr().AsSlice()}}
		r, err := dns.Exchange(m, tcp.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		return r.Answer[len(r.Answer)-1].(*dns.A).A.String()
	}
	first := answer("api.example.test.", "203.0.1.0/24")
	fmt.Println("same /16, same answer:", answer("api.example.test.", "203.0.200.0/24") == first)

	legacy := api
	legacy.Name = "legacy-api.example.test."
	err = srv.Update(zone("www 3600 IN CNAME api\n"), []dnslb.Service{api, legacy})
	fmt.Println("update:", err)
	fmt.Println("www follows its CNAME:", answer("www.example.test.", "203.0.1.0/24") == first)
	fmt.Println("legacy-api answers alike:", answer("legacy-api.example.test.", "203.0.1.0/24") == first)

	if err := srv.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("served:", <-done)
	// Output:
	// same /16, same answer: true
	// update: <nil>
	// www follows its CNAME: true
	// legacy-api answers alike: true
	// served: <nil>
}

// An Updater keeps the A records of a name on a primary server equal to
// a pool's ready backends, with TSIG-signed dynamic updates. Here the
// primary is a second dnslb server that accepts updates; in production it
// is BIND, Knot or PowerDNS.
func ExampleUpdater() {
	key := dnslb.TSIGKey{Name: "lbkit.", Secret: "c2VjcmV0LWtleS1mb3ItdGhlLWV4YW1wbGU="}

	// The primary: example.test. with www open to signed updates.
	primaryPool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer primaryPool.Close()
	primary, err := dnslb.New(dnslb.Config{
		Zones:      []dnslb.Zone{{Origin: "example.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n"}},
		Services:   []dnslb.Service{{Name: "www.example.test.", Pool: primaryPool, UpdatePort: 443}},
		UpdateKeys: []dnslb.TSIGKey{key},
		Logger:     slog.New(slog.DiscardHandler),
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
	go func() { done <- primary.Serve(ctx, udp, []net.Listener{tcp}) }()

	// The pool whose health the updater publishes.
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	for _, a := range []string{"198.18.0.1:443", "198.18.0.2:443"} {
		pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	u, err := dnslb.NewUpdater(dnslb.UpdaterConfig{
		Server: tcp.Addr().String(), Zone: "example.test.", Name: "www.example.test.",
		Pool: pool, Key: key, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	show := func() {
		var got []string
		for _, ep := range primaryPool.Endpoints() {
			got = append(got, ep.Addr().String())
		}
		slices.Sort(got)
		fmt.Println(got)
	}
	if err := u.Sync(ctx); err != nil {
		log.Fatal(err)
	}
	show()
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:443"), false)
	if err := u.Sync(ctx); err != nil {
		log.Fatal(err)
	}
	show()

	bad := dnslb.UpdaterConfig{Server: tcp.Addr().String(), Zone: "example.test.", Name: "www.example.test.",
		Pool: pool, Key: dnslb.TSIGKey{Name: "lbkit.", Secret: "d3Jvbmc="}, Logger: slog.New(slog.DiscardHandler)}
	ub, _ := dnslb.NewUpdater(bad)
	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:443"), true)
	err = ub.Sync(ctx) // a wrong secret changes nothing
	fmt.Println(errors.Is(err, dnslb.ErrBadSig))
	show()

	cancel()
	<-done
	// Output:
	// [198.18.0.1:443 198.18.0.2:443]
	// [198.18.0.2:443]
	// true
	// [198.18.0.2:443]
}

// A zone signed online and open to transfers: a secondary (here a
// miekg/dns client) transfers the zone with TSIG, and a validating
// resolver's DO query gets the answer with its RRSIG. In production the
// key comes from BIND key files with LoadKey, and Notify names the
// secondaries.
func Example_signedAndTransferred() {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}})
	defer pool.Close()
	pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.1:443")})
	key, err := dnslb.GenerateKey("example.test.", dns.ED25519)
	if err != nil {
		log.Fatal(err)
	}
	xfr := dnslb.TSIGKey{Name: "xfr.", Secret: "eGZyLWtleS1mb3ItbGJraXQtdGVzdHMtb25seSE="}
	srv, err := dnslb.New(dnslb.Config{
		Zones: []dnslb.Zone{{Origin: "example.test.", Keys: []dnslb.SigningKey{key},
			Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"}},
		Services:      []dnslb.Service{{Name: "www.example.test.", Pool: pool}},
		TransferPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		TransferKeys:  []dnslb.TSIGKey{xfr},
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	udp, tcp, err := dnslb.Listen(context.Background(), "127.0.0.1:0", 1)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- srv.Serve(context.Background(), udp, []net.Listener{tcp}) }()

	m := new(dns.Msg)
	m.SetAxfr("example.test.")
	m.SetTsig(xfr.Name, dns.HmacSHA256, 300, time.Now().Unix())
	tr := &dns.Transfer{TsigSecret: map[string]string{xfr.Name: xfr.Secret}}
	ch, err := tr.In(m, tcp.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	var types []string
	for env := range ch {
		if env.Error != nil {
			log.Fatal(env.Error)
		}
		for _, rr := range env.RR {
			types = append(types, rr.Header().Name+" "+dns.TypeToString[rr.Header().Rrtype])
		}
	}
	fmt.Println("AXFR:", types)

	m = new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	m.SetEdns0(1232, true)
	r, err := dns.Exchange(m, udp[0].LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	for _, rr := range r.Answer {
		fmt.Println(rr.Header().Name, dns.TypeToString[rr.Header().Rrtype])
	}
	srv.Shutdown(context.Background())
	<-done
	// Output:
	// AXFR: [example.test. SOA example.test. NS ns1.example.test. A www.example.test. A example.test. SOA]
	// www.example.test. A
	// www.example.test. RRSIG
}
