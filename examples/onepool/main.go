// Command onepool shows lbkit's one model: a single pool, declared once,
// feeds four front-ends at once — an HTTP reverse proxy, a redirect
// dispatcher, an authoritative DNS server and a TCP proxy — and one health
// checker follows it. A member added to the pool is probed and then served
// by all four with no other call; a member that dies leaves all four.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/dnslb"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/proxy"
	"github.com/lbkit/lbkit/redirect"
	"github.com/lbkit/lbkit/tcpproxy"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "onepool:", err)
		os.Exit(1)
	}
}

// backend starts an HTTP server named name on a loopback port.
func backend(name string) (netip.AddrPort, *http.Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return netip.MustParseAddrPort(ln.Addr().String()), srv, nil
}

// lbServer is the lifecycle every lbkit server shares.
type lbServer interface {
	Serve(ctx context.Context, ln net.Listener) error
	Shutdown(ctx context.Context) error
}

func run(w io.Writer) error {
	quiet := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	// The pool: the one list of members, with the policy.
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}, Logger: quiet})
	defer pool.Close()
	names := map[netip.AddrPort]string{}
	var servers []*http.Server
	for _, name := range []string{"alpha", "beta", "gamma"} {
		addr, srv, err := backend(name)
		if err != nil {
			return err
		}
		defer srv.Close()
		names[addr] = name
		servers = append(servers, srv)
	}
	addrs := make([]netip.AddrPort, 0, len(names))
	for a := range names {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, func(a, b netip.AddrPort) int { return strings.Compare(names[a], names[b]) })
	if err := pool.Set([]balancer.Backend{{Addr: addrs[0]}, {Addr: addrs[1]}}); err != nil {
		return err
	}

	// One checker follows the pool: every member is probed, now and later.
	chk, err := health.New(health.Config{Logger: quiet})
	if err != nil {
		return err
	}
	defer chk.Close()
	if err := chk.Follow(pool, health.Template{Probe: health.HTTP{Path: "/"}, Interval: 50 * time.Millisecond, Fall: 1, Rise: 1}); err != nil {
		return err
	}

	// Four front-ends, each given the pool (and the same lifecycle).
	hp, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Logger: quiet})
	if err != nil {
		return err
	}
	defer hp.Close()
	proxySrv, err := proxy.NewServer(proxy.ServerConfig{Handler: hp, Logger: quiet})
	if err != nil {
		return err
	}
	rh, err := redirect.New(redirect.Config{Pool: pool, Logger: quiet})
	if err != nil {
		return err
	}
	redirectSrv, err := redirect.NewServer(redirect.ServerConfig{Handler: rh, Logger: quiet})
	if err != nil {
		return err
	}
	tcpSrv, err := tcpproxy.New(tcpproxy.Config{Pool: pool, Logger: quiet})
	if err != nil {
		return err
	}
	front := map[string]string{}
	for name, s := range map[string]lbServer{"proxy": proxySrv, "redirect": redirectSrv, "tcp": tcpSrv} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go s.Serve(ctx, ln)
		defer s.Shutdown(ctx)
		front[name] = ln.Addr().String()
	}
	dnsSrv, err := dnslb.New(dnslb.Config{
		Zones:    []dnslb.Zone{{Origin: "example.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"}},
		Services: []dnslb.Service{{Name: "www.example.test.", Pool: pool}},
		Logger:   quiet,
	})
	if err != nil {
		return err
	}
	udp, tcpLn, err := dnslb.Listen(ctx, "127.0.0.1:0", 1)
	if err != nil {
		return err
	}
	go dnsSrv.Serve(ctx, udp, []net.Listener{tcpLn})
	defer dnsSrv.Shutdown(ctx)
	front["dns"] = udp[0].LocalAddr().String()

	// What each front-end serves: the backends it reaches in six tries.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	reached := func(kind string) string {
		seen := map[string]bool{}
		for range 6 {
			switch kind {
			case "proxy", "tcp":
				if resp, err := client.Get("http://" + front[kind] + "/"); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					seen[string(b)] = true
				}
			case "redirect":
				if resp, err := client.Get("http://" + front[kind] + "/"); err == nil {
					resp.Body.Close()
					if loc := resp.Header.Get("Location"); loc != "" {
						seen[names[netip.MustParseAddrPort(strings.TrimSuffix(strings.TrimPrefix(loc, "http://"), "/"))]] = true
					}
				}
			case "dns":
				m := new(dns.Msg)
				m.SetQuestion("www.example.test.", dns.TypeSRV)
				if r, err := dns.Exchange(m, front["dns"]); err == nil {
					for _, rr := range r.Answer {
						if srv, ok := rr.(*dns.SRV); ok {
							seen[names[netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.Port)]] = true
						}
					}
				}
			}
		}
		out := make([]string, 0, len(seen))
		for n := range seen {
			out = append(out, n)
		}
		slices.Sort(out)
		return strings.Join(out, " ")
	}
	report := func(step string) {
		fmt.Fprintln(w, step)
		for _, kind := range []string{"proxy", "redirect", "dns", "tcp"} {
			fmt.Fprintf(w, "  %-8s -> %s\n", kind, reached(kind))
		}
	}
	waitReady := func(n int) error {
		deadline := time.After(10 * time.Second)
		for {
			s := pool.Snapshot()
			if len(s.Ready) == n {
				return nil
			}
			select {
			case <-s.Changed():
			case <-deadline:
				return fmt.Errorf("pool has %d ready members, want %d", len(s.Ready), n)
			}
		}
	}

	if err := waitReady(2); err != nil {
		return err
	}
	report("two members:")
	// Add a member to the pool: probed, then served by every front-end.
	if err := pool.Add(balancer.Backend{Addr: addrs[2]}); err != nil {
		return err
	}
	if err := waitReady(3); err != nil {
		return err
	}
	report("gamma added to the pool (nothing else):")
	// Kill a backend: the checker takes it out of every front-end.
	servers[0].Close()
	if err := waitReady(2); err != nil {
		return err
	}
	report("alpha killed:")
	return nil
}
