// Command proxy shows lbkit's HTTP reverse proxy end to end: it starts
// three backends and the proxy on loopback, sends a few requests through
// it and prints where they went, kills one backend and shows that retries
// hide it from the client, then shows a sticky session, and exits.
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
	"github.com/lbkit/lbkit/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "proxy example:", err)
		os.Exit(1)
	}
}

// serve starts h on a free loopback port and returns its address and the
// server.
func serve(h http.Handler) (netip.AddrPort, *http.Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return netip.MustParseAddrPort(ln.Addr().String()), srv, nil
}

func run() error {
	names := map[netip.AddrPort]string{}
	var backends []balancer.Backend
	var servers []*http.Server
	for _, name := range []string{"alpha", "beta", "gamma"} {
		addr, srv, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s served %s for %s", name, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"))
		}))
		if err != nil {
			return err
		}
		defer srv.Close()
		names[addr] = name
		servers = append(servers, srv)
		backends = append(backends, balancer.Backend{Addr: addr})
	}

	pool, err := balancer.New(balancer.Config{Builder: roundrobin.Builder{}})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Set(backends); err != nil {
		return err
	}
	p, err := proxy.NewHTTP(proxy.HTTPConfig{
		Pool:         pool,
		StickyCookie: "lb",
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	front, err := proxy.NewServer(proxy.ServerConfig{Handler: p})
	if err != nil {
		return err
	}
	go front.Serve(context.Background(), ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		front.Shutdown(ctx)
	}()
	url := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 5 * time.Second}

	fetch := func(path, cookie string) (string, string, error) {
		req, err := http.NewRequest("GET", url+path, nil)
		if err != nil {
			return "", "", err
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		var set string
		if cs := resp.Cookies(); len(cs) > 0 {
			set = cs[0].Name + "=" + cs[0].Value
		}
		return fmt.Sprintf("%d %s", resp.StatusCode, body), set, err
	}

	fmt.Println("proxy on", url, "in front of", len(backends), "backends")
	for i := range 6 {
		got, _, err := fetch(fmt.Sprintf("/page/%d", i), "")
		if err != nil {
			return err
		}
		fmt.Println(" ", got)
	}

	fmt.Println("killing", names[backends[1].Addr], "- GETs are retried on another backend:")
	servers[1].Close()
	for i := range 4 {
		got, _, err := fetch(fmt.Sprintf("/after-kill/%d", i), "")
		if err != nil {
			return err
		}
		fmt.Println(" ", got)
	}
	ep := pool.Endpoint(backends[1].Addr)
	fmt.Printf("  %s: %d requests, %d failures recorded (feed them to a health.Checker to eject it)\n",
		names[backends[1].Addr], ep.Requests(), ep.Failures())

	fmt.Println("sticky session: the cookie keeps a client on one backend")
	_, cookie, err := fetch("/login", "")
	if err != nil {
		return err
	}
	for range 3 {
		got, _, err := fetch("/cart", cookie)
		if err != nil {
			return err
		}
		fmt.Println(" ", got)
	}
	return nil
}
