//go:build linux

// Command iplb shows lbkit's kernel NAT load balancer at work. It builds a
// small network-namespace lab (a client, a balancer and three backends on
// 198.18.0.0/15, never connected to this machine's network), puts a
// virtual service on the balancer, sends requests through it, marks a
// backend unhealthy and sends more, then tears everything down.
//
// It needs root (network namespaces and nftables); otherwise it says so
// and exits 0.
//
//	sudo go run ./examples/iplb
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/iplb"
)

func main() {
	if err := run(); err != nil {
		if errors.Is(err, netlab.ErrNotPermitted) {
			fmt.Println("iplb example: skipped:", err)
			fmt.Println("run it as root: sudo go run ./examples/iplb")
			return
		}
		log.Fatal(err)
	}
}

func run() error {
	lab, err := netlab.Open(netlab.Config{Prefix: "lbkex"})
	if err != nil {
		return err
	}
	defer lab.Close()
	p := netip.MustParsePrefix
	client, err := lab.AddHost("client", p("198.18.1.2/24"))
	if err != nil {
		return err
	}
	bal, err := lab.AddHost("balancer", p("198.18.1.1/24"), p("198.18.2.1/24"))
	if err != nil {
		return err
	}
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	for _, step := range []error{
		bal.Sysctl("net.ipv4.ip_forward", "1"),
		bal.AddAddr(netip.PrefixFrom(vip.Addr(), 32), "lo"),
		client.AddRoute(p("198.19.0.0/24"), netip.MustParseAddr("198.18.1.1")),
	} {
		if step != nil {
			return step
		}
	}
	var backends []balancer.Backend
	for i, w := range []uint32{1, 1, 2} {
		name := fmt.Sprintf("backend%d", i+1)
		h, err := lab.AddHost(name, p(fmt.Sprintf("198.18.2.%d/24", 11+i)))
		if err != nil {
			return err
		}
		// Gateway mode: replies return through the balancer.
		if err := h.AddRoute(p("0.0.0.0/0"), netip.MustParseAddr("198.18.2.1")); err != nil {
			return err
		}
		ln, err := h.Listen("tcp", ":8080")
		if err != nil {
			return err
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s saw %s", name, r.RemoteAddr)
		}))
		backends = append(backends, balancer.Backend{Addr: netip.AddrPortFrom(h.Addr4(), 8080), Weight: w})
	}

	pool, err := balancer.New(balancer.Config{Builder: maglev.Builder{}})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Set(backends); err != nil {
		return err
	}
	lb, err := iplb.New(iplb.Config{NetNS: int(bal.NS()), Services: []iplb.Service{{
		Name: "web", VIP: vip, Key: balancer.MustParseKey("flow"), Pool: pool,
	}}})
	if err != nil {
		return err
	}
	defer lb.Close()
	go lb.Serve(context.Background())
	if err := lb.Sync(context.Background()); err != nil {
		return err
	}
	fmt.Printf("service web on %v/tcp, gateway mode, backends weighted 1:1:2\n", vip)

	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: client.DialContext, DisableKeepAlives: true,
	}}
	send := func(n int) error {
		counts := map[string]int{}
		var saw string
		for range n {
			resp, err := c.Get("http://" + vip.String() + "/")
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			name, rest, _ := strings.Cut(string(body), " saw ")
			counts[name]++
			saw, _, _ = net.SplitHostPort(rest)
		}
		fmt.Printf("  %d new connections: backend1 %d, backend2 %d, backend3 %d (backends see the client as %s)\n",
			n, counts["backend1"], counts["backend2"], counts["backend3"], saw)
		return nil
	}
	if err := send(400); err != nil {
		return err
	}

	pool.SetHealthy(backends[2].Addr, false)
	if err := lb.Sync(context.Background()); err != nil {
		return err
	}
	fmt.Println("backend3 marked unhealthy (one nftables batch):")
	if err := send(200); err != nil {
		return err
	}

	stats, err := lb.Stats()
	if err != nil {
		return err
	}
	for _, st := range stats {
		fmt.Printf("kernel counters for %s: %d flows, %d slots in the map\n", st.Name, st.Flows, st.TableSize)
		for _, b := range st.Backends {
			fmt.Printf("  %v: %d flows, %d slots\n", b.Addr, b.Flows, b.Slots)
		}
	}
	if err := lb.Close(); err != nil {
		return err
	}
	fmt.Println("closed: the balancer's nftables table is gone")
	return nil
}

func init() { log.SetFlags(0); log.SetOutput(os.Stderr) }
