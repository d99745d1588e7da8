// Command httplb shows lbkit's client-side HTTP balancing: a service calls
// a fleet of three backends through an httplb.Transport, one backend dies
// and retries hide it, the retry budget shows its count, and the same
// Transport serves an httputil.ReverseProxy that keeps a client on one
// backend. Everything runs on loopback and the program exits.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/httplb"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "httplb example:", err)
		os.Exit(1)
	}
}

// serve starts h on a free loopback port.
func serve(h http.Handler) (netip.AddrPort, *http.Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	return netip.MustParseAddrPort(ln.Addr().String()), srv, nil
}

func get(c *http.Client, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func run(w io.Writer) error {
	names := map[string]string{}
	var backends []balancer.Backend
	var servers []*http.Server
	for _, name := range []string{"alpha", "beta", "gamma"} {
		addr, srv, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, name)
		}))
		if err != nil {
			return err
		}
		defer srv.Close()
		names[addr.String()] = name
		servers = append(servers, srv)
		backends = append(backends, balancer.Backend{Addr: addr})
	}

	// A service calling the fleet: one field on its http.Client.
	pool := balancer.MustNew(balancer.Config{Name: "fleet", Builder: roundrobin.Builder{}})
	defer pool.Close()
	if err := pool.Set(backends); err != nil {
		return err
	}
	tr, err := httplb.New(httplb.Config{
		Pool:    pool,
		Backoff: circuit.Backoff{Base: time.Millisecond},
		Circuit: circuit.Config{Pool: circuit.Thresholds{RetryBudget: circuit.RetryBudget{Percent: 20}}},
	})
	if err != nil {
		return err
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	count := func(n int) (map[string]int, int, error) {
		got, failed := map[string]int{}, 0
		for range n {
			who, err := get(client, "http://fleet.internal/hello")
			if err != nil {
				failed++
				continue
			}
			got[who]++
		}
		return got, failed, nil
	}
	got, failed, _ := count(9)
	fmt.Fprintln(w, "9 requests:", summary(got), "failed:", failed)

	// alpha dies: its listener and connections close. GETs are retried on
	// another member.
	servers[0].Close()
	got, failed, _ = count(9)
	fmt.Fprintln(w, "alpha killed, 9 requests:", summary(got), "failed:", failed)
	fmt.Fprintln(w, "retry overflows:", tr.Circuit().Pool().Overflows(circuit.Retries))

	// The same Transport behind httputil.ReverseProxy, keyed by client
	// address on a consistent-hash pool: one client, one backend.
	sticky := balancer.MustNew(balancer.Config{Name: "sticky", Builder: ringhash.Builder{}})
	defer sticky.Close()
	if err := sticky.Set(backends[1:]); err != nil {
		return err
	}
	ptr, err := httplb.New(httplb.Config{Pool: sticky, Key: balancer.MustParseKey("client")})
	if err != nil {
		return err
	}
	defer ptr.CloseIdleConnections()
	proxyAddr, proxySrv, err := serve(&httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetXForwarded() },
		Transport: ptr,
	})
	if err != nil {
		return err
	}
	defer proxySrv.Close()
	pc := &http.Client{Transport: &http.Transport{}}
	defer pc.CloseIdleConnections()
	seen := map[string]int{}
	for range 5 {
		who, err := get(pc, "http://"+proxyAddr.String()+"/")
		if err != nil {
			return err
		}
		seen[who]++
	}
	fmt.Fprintln(w, "through a ReverseProxy, 5 requests from one client reach", len(seen), "backend")
	return nil
}

// summary prints counts by backend name, sorted.
func summary(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for _, k := range keys {
		s += fmt.Sprintf("%s=%d ", k, m[k])
	}
	return s
}
