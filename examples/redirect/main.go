// Command redirect shows lbkit's redirect front-end end to end: it starts
// three backends and a dispatcher on loopback, follows a few redirects with
// an ordinary http.Client, takes one backend down, waits for the health
// checker to eject it and shows that clients are no longer sent there,
// then exits.
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
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/redirect"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "redirect example:", err)
		os.Exit(1)
	}
}

// serve starts h on a free loopback port and returns its address and a
// function that stops it.
func serve(h http.Handler) (netip.AddrPort, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
	return netip.MustParseAddrPort(ln.Addr().String()), stop, nil
}

func run() error {
	// The pool is the only list of backends; each is redirected to as
	// http://<addr> (a member's redirect.MetaURL metadata says otherwise).
	pool := balancer.MustNew(balancer.Config{Name: "demo", Builder: roundrobin.Builder{}, Logger: slog.New(slog.DiscardHandler)})
	defer pool.Close()
	stops := map[netip.AddrPort]func(){}
	for _, name := range []string{"alpha", "beta", "gamma"} {
		addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s served %s", name, r.URL.RequestURI())
		}))
		if err != nil {
			return err
		}
		defer stop()
		stops[addr] = stop
		if err := pool.Add(balancer.Backend{Addr: addr}); err != nil {
			return err
		}
	}

	h, err := redirect.New(redirect.Config{
		Pool:   pool,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}

	// Active health checks keep the handler's pool in step: a TCP probe
	// every 100 ms, one failure ejects.
	chk, err := health.New(health.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer chk.Close()
	err = chk.Follow(h.Pool(), health.Template{
		Probe: health.TCP{}, Interval: 100 * time.Millisecond,
		Fall: 1, Rise: 1, Initial: health.Healthy,
	})
	if err != nil {
		return err
	}
	dispatcher, stop, err := serve(h)
	if err != nil {
		return err
	}
	defer stop()

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) error {
		var hops []string
		client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
			hops = append(hops, req.URL.String())
			return nil
		}
		resp, err := client.Get("http://" + dispatcher.String() + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		fmt.Printf("GET %-12s → %v → %q\n", path, hops, body)
		return nil
	}

	for _, p := range []string{"/a", "/b?x=1", "/c", "/d"} {
		if err := get(p); err != nil {
			return err
		}
	}

	// Take the first backend down and wait for the checker to eject it
	// (within one probe interval).
	down := pool.Snapshot().Members[0].Addr()
	stops[down]()
	start := time.Now()
	for ready := true; ready; {
		snap := h.Pool().Snapshot()
		ready = false
		for _, w := range snap.Ready {
			ready = ready || w.Endpoint.Addr() == down
		}
		if ready {
			select {
			case <-snap.Changed():
			case <-time.After(5 * time.Second):
				return fmt.Errorf("backend %v was never ejected", down)
			}
		}
	}
	fmt.Printf("backend %v is down; ejected after %v\n", down, time.Since(start).Round(10*time.Millisecond))
	for _, p := range []string{"/e", "/f", "/g"} {
		if err := get(p); err != nil {
			return err
		}
	}
	return nil
}
