//go:build linux

// Command l2lb builds a small network-namespace lab — a client, a
// balancer and three backends on one bridge, addresses from
// 198.18.0.0/24, never joined to the host's network — and shows direct
// server return through lbkit's XDP balancer: requests to the VIP spread
// over the backends, replies bypass the balancer, and a failed backend's
// share moves to the others.
//
// It needs root: sudo go run ./examples/l2lb. Without root it says so and
// exits 0.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/l2lb"
)

var vip = netip.MustParseAddr("198.18.0.100")

func main() {
	if os.Geteuid() != 0 {
		fmt.Println("l2lb example: building a namespace lab and attaching XDP needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF).")
		fmt.Println("Run it as: sudo go run ./examples/l2lb")
		return
	}
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	lab, err := netlab.Open(netlab.Config{Prefix: "l2lbex"})
	if err != nil {
		return err
	}
	defer lab.Close()

	client, err := lab.AddHost("client") // 198.18.0.1
	if err != nil {
		return err
	}
	lb, err := lab.AddHost("lb") // 198.18.0.2
	if err != nil {
		return err
	}
	// The VIP lives on the balancer's interface: it answers ARP for it.
	if err := lb.AddAddr(netip.PrefixFrom(vip, 32), "eth0"); err != nil {
		return err
	}

	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	var members []balancer.Backend
	for i := range 3 {
		h, err := lab.AddHost(fmt.Sprintf("be%d", i+1)) // 198.18.0.3-5
		if err != nil {
			return err
		}
		// Backends accept the VIP on lo and stay quiet about it on ARP.
		if err := h.AddAddr(netip.PrefixFrom(vip, 32), "lo"); err != nil {
			return err
		}
		for _, k := range []string{"all", "eth0"} {
			for key, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2", "rp_filter": "0"} {
				if err := h.Sysctl("net.ipv4.conf."+k+"."+key, v); err != nil {
					return err
				}
			}
		}
		if err := l2lb.CheckBackend(h.Do, vip); err != nil {
			return err
		}
		fmt.Printf("%s (%v): set up for direct server return\n", h.Name(), h.Addr4())
		if err := serve(h); err != nil {
			return err
		}
		members = append(members, balancer.Backend{Addr: netip.AddrPortFrom(h.Addr4(), 80)})
	}
	if err := pool.Set(members); err != nil {
		return err
	}

	var bal *l2lb.Balancer
	err = lb.Do(func() (err error) {
		bal, err = l2lb.New(l2lb.Config{
			Interface:       "eth0",
			Mode:            l2lb.AttachGeneric, // veth: see the package doc
			Services:        []l2lb.Service{{VIP: netip.AddrPortFrom(vip, 80), Pool: pool}},
			ResolveInterval: 100 * time.Millisecond,
		})
		return err
	})
	if err != nil {
		return err
	}
	go bal.Serve(context.Background())
	defer bal.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bal.Sync(ctx); err != nil {
		return err
	}
	fmt.Printf("balancer attached to lb/eth0 in %s mode; VIP %v:80\n\n", bal.Mode(), vip)

	counts, err := spread(client, 300)
	if err != nil {
		return err
	}
	fmt.Println("300 new connections to the VIP were served by:", counts)

	lbRx0, clientRx0 := rxBytes(lb), rxBytes(client)
	for range 4 {
		if _, err := get(client, "/blob?n="+strconv.Itoa(8<<20)); err != nil {
			return err
		}
	}
	fmt.Printf("4 downloads of 8 MiB: the client received %d bytes; the balancer's eth0 received %d (requests and ACKs only: replies bypass it)\n\n",
		rxBytes(client)-clientRx0, rxBytes(lb)-lbRx0)

	failed := members[1].Addr
	pool.SetHealthy(failed, false)
	if err := bal.Sync(ctx); err != nil {
		return err
	}
	counts, err = spread(client, 300)
	if err != nil {
		return err
	}
	fmt.Printf("be2 marked unhealthy; 300 new connections were served by: %v\n\n", counts)

	st, err := bal.Stats()
	if err != nil {
		return err
	}
	fmt.Printf("XDP counters: forwarded %d, passed %d, dropped %d (no backend %d); connection table hits %d, misses %d\n",
		st.Forwarded, st.Passed, st.Dropped, st.NoBackend, st.ConnHits, st.ConnMisses)
	for _, b := range st.Services[0].Backends {
		fmt.Printf("  %-15v %v up=%-5v in-ring=%-5v %6d packets %9d bytes\n", b.Addr, b.MAC, b.Up, b.InRing, b.Packets, b.Bytes)
	}
	return nil
}

// serve runs an HTTP server on :80 in h until the lab closes its listener.
func serve(h *netlab.Host) error {
	ln, err := h.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/name", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, h.Name()) })
	blob := make([]byte, 1<<20)
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		for ; n > 0; n -= len(blob) {
			if _, err := w.Write(blob[:min(n, len(blob))]); err != nil {
				return
			}
		}
	})
	go (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	return nil
}

// get opens a new connection from the client to the VIP and fetches path.
func get(client *netlab.Host, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 80).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func spread(client *netlab.Host, n int) (map[string]int, error) {
	counts := map[string]int{}
	for range n {
		name, err := get(client, "/name")
		if err != nil {
			return nil, err
		}
		counts[name]++
	}
	return counts, nil
}

func rxBytes(h *netlab.Host) uint64 {
	l, err := h.Handle().LinkByName("eth0")
	if err != nil {
		return 0
	}
	return l.Attrs().Statistics.RxBytes
}
