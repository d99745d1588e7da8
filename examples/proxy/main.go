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
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxy"
)

func main() {
	if err := run(os.Stdout); err != nil {
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

// run runs the example and writes what it sees to w.
func run(w io.Writer) error {
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
	served := make(chan error, 1)
	go func() { served <- front.Serve(context.Background(), ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		front.Shutdown(ctx)
		<-served
	}()
	url := "http://" + ln.Addr().String()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 5 * time.Second, Transport: tr}

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

	fmt.Fprintln(w, "proxy on", url, "in front of", len(backends), "backends")
	for i := range 6 {
		got, _, err := fetch(fmt.Sprintf("/page/%d", i), "")
		if err != nil {
			return err
		}
		fmt.Fprintln(w, " ", got)
	}

	dead := names[backends[1].Addr]
	fmt.Fprintln(w, "killing", dead, "- GETs are retried on another backend:")
	servers[1].Close()
	// Four requests, and more until one was refused by the dead backend
	// (round robin gets there within three when the picks share a
	// counter shard, see the roundrobin package; the first try may reuse
	// a keep-alive connection the backend closed, which the proxy does not
	// count as the backend's failure).
	ep := pool.Endpoint(backends[1].Addr)
	before, failedBefore := ep.Requests(), ep.Failures()
	for i := 0; i < 4 || ep.Failures() == failedBefore; i++ {
		if i == 12 {
			return fmt.Errorf("no failure recorded for %s in %d requests", dead, i)
		}
		got, _, err := fetch(fmt.Sprintf("/after-kill/%d", i), "")
		if err != nil {
			return err
		}
		fmt.Fprintln(w, " ", got)
	}
	fmt.Fprintf(w, "  %s: tried %d times after it died, %d failures recorded (feed them to a health.Checker to eject it)\n",
		dead, ep.Requests()-before, ep.Failures()-failedBefore)

	fmt.Fprintln(w, "sticky session: the cookie keeps a client on one backend")
	got, cookie, err := fetch("/login", "")
	if err != nil {
		return err
	}
	name, _, _ := strings.Cut(cookie, "=")
	fmt.Fprintf(w, "  %s; cookie %s set\n", got, name)
	for range 3 {
		got, _, err := fetch("/cart", cookie)
		if err != nil {
			return err
		}
		fmt.Fprintln(w, " ", got)
	}
	return nil
}
