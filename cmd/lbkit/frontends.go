package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

// healthInterval is how often the demo's health checker probes each
// backend; a killed backend (connection refused) leaves every pool within
// about one interval. The probe timeout is longer, so a backend that is
// merely slow under the experiment's load is not taken out.
const (
	healthInterval = 100 * time.Millisecond
	healthTimeout  = 2 * time.Second
)

// undo collects cleanups and runs them last-in first-out.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }

// run runs the cleanups and forgets them. Its receiver is a pointer, so
// "defer u.run()" sees cleanups pushed after the defer statement.
func (u *undo) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// newPool returns a pool over bs kept in step with a health checker that
// probes each backend with probe (TCP connect when nil); u stops both.
func newPool(u *undo, bs []*backend, b balancer.Builder, probe health.Prober) (*balancer.Pool, *health.Checker, error) {
	if probe == nil {
		probe = health.TCP{}
	}
	pool, err := balancer.New(balancer.Config{Builder: b})
	if err != nil {
		return nil, nil, err
	}
	u.push(func() { _ = pool.Close() })
	members := make([]balancer.Backend, len(bs))
	for i, be := range bs {
		members[i] = balancer.Backend{Addr: be.addr}
	}
	if err := pool.Set(members); err != nil {
		return nil, nil, err
	}
	chk, err := health.New(health.Config{})
	if err != nil {
		return nil, nil, err
	}
	u.push(func() { _ = chk.Close() })
	err = chk.Follow(pool, health.Template{
		Probe: probe, Interval: healthInterval,
		Timeout: healthTimeout, Fall: 1, Rise: 2, Initial: health.Healthy,
	})
	if err != nil {
		return nil, nil, err
	}
	return pool, chk, nil
}

// serveLoopback runs serve on a fresh 127.0.0.1 port until u's cleanup,
// which calls shutdown and waits for serve to return, and returns the
// port's address.
func serveLoopback(u *undo, serve func(net.Listener) error, shutdown func()) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serve(ln)
	}()
	u.push(func() {
		shutdown()
		<-done
	})
	return ln.Addr().String(), nil
}

// shutdownWithin calls f with a context that ends after d.
func shutdownWithin(d time.Duration, f func(context.Context) error) func() {
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_ = f(ctx)
	}
}

// retry runs f up to tries times while it fails, waiting a growing
// fraction of the health interval between tries, as a client that re-asks
// the dispatcher (redirect) or the resolver (DNS) after an error would.
func retry(ctx context.Context, tries int, f func() error) error {
	var err error
	for i := range tries {
		if err = f(); err == nil || ctx.Err() != nil {
			return err
		}
		if i < tries-1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(i+1) * healthInterval / 2):
			}
		}
	}
	return err
}

// setupDNS serves the backends' addresses from dnslb: every client
// resolves the service name (one weighted pick per answer, TTL 1 s), then
// connects to the address it got on the backends' shared port.
func setupDNS(ctx context.Context, cfg demoConfig, bs []*backend) (_ func(context.Context, int) error, _ func(), err error) {
	var u undo
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	pool, _, err := newPool(&u, bs, roundrobin.Builder{}, nil)
	if err != nil {
		return nil, nil, err
	}
	const name = "www.demo.lbkit.test."
	srv, err := dnslb.New(dnslb.Config{
		Zones:      []dnslb.Zone{{Origin: "demo.lbkit.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 5\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"}},
		Services:   []dnslb.Service{{Name: name, Pool: pool, Policy: dnslb.PolicyWeighted, Count: 1, TTL: time.Second}},
		UDPSockets: 2,
	})
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	u.push(cancel)
	// Not 127.0.0.1: the demo's clients connect from there, and the
	// overloaded direct run leaves thousands of their ports in TIME_WAIT,
	// which a listener cannot bind (dnslb needs one port for UDP and TCP).
	udp, tcp, err := dnslb.Listen(sctx, "127.0.0.2:0", 2)
	if err != nil {
		return nil, nil, err
	}
	server := udp[0].LocalAddr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, udp, []net.Listener{tcp}) }()
	u.push(func() {
		cancel()
		if err := <-served; err != nil && !errors.Is(err, context.Canceled) {
			fmt.Println("dns server:", err)
		}
	})

	port := bs[0].addr.Port()
	c := httpClient(cfg, true)
	u.push(c.CloseIdleConnections)
	dc := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	resolve := func(ctx context.Context) (netip.Addr, error) {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		r, _, err := dc.ExchangeContext(ctx, q, server)
		if err != nil {
			return netip.Addr{}, err
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
					return ip, nil
				}
			}
		}
		return netip.Addr{}, fmt.Errorf("no A record (rcode %s)", dns.RcodeToString[r.Rcode])
	}
	do := func(ctx context.Context, i int) error {
		return retry(ctx, 4, func() error {
			ip, err := resolve(ctx)
			if err != nil {
				return err
			}
			return get(ctx, c, "http://"+netip.AddrPortFrom(ip, port).String()+"/")
		})
	}
	return do, u.run, nil
}

// frontEnd is what a loopback strategy puts in front of the backends: a
// server on a listener and its graceful shutdown.
type frontEnd struct {
	serve    func(net.Listener) error
	shutdown func(context.Context) error
}

// setupServed builds a pool over bs kept healthy by a checker, a front-end
// on it (build), serves it on loopback and returns a client function that
// GETs path through it, retrying up to tries times.
func setupServed(cfg demoConfig, bs []*backend, path string, tries int,
	build func(u *undo, pool *balancer.Pool, chk *health.Checker) (frontEnd, error),
) (_ func(context.Context, int) error, _ func(), err error) {
	var u undo
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	pool, chk, err := newPool(&u, bs, roundrobin.Builder{}, nil)
	if err != nil {
		return nil, nil, err
	}
	fe, err := build(&u, pool, chk)
	if err != nil {
		return nil, nil, err
	}
	addr, err := serveLoopback(&u, fe.serve, shutdownWithin(5*time.Second, fe.shutdown))
	if err != nil {
		return nil, nil, err
	}
	c := httpClient(cfg, true)
	u.push(c.CloseIdleConnections)
	url := "http://" + addr + path
	do := func(ctx context.Context, i int) error {
		return retry(ctx, tries, func() error { return get(ctx, c, url) })
	}
	return do, u.run, nil
}

// setupRedirect puts a redirect.Handler in front of the backends, served
// by redirect.Server (no net/http per-request cost; the Handler also works
// in any http.Server): every client asks the dispatcher and follows its
// 302 to a backend, asking again after an error.
func setupRedirect(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), error) {
	return setupServed(cfg, bs, "/index.html", 4, func(_ *undo, pool *balancer.Pool, _ *health.Checker) (frontEnd, error) {
		// Members are redirected to as http://<addr>: the default URL.
		h, err := redirect.New(redirect.Config{Pool: pool})
		if err != nil {
			return frontEnd{}, err
		}
		rs, err := redirect.NewServer(redirect.ServerConfig{Handler: h})
		if err != nil {
			return frontEnd{}, err
		}
		return frontEnd{func(ln net.Listener) error { return rs.Serve(context.Background(), ln) }, rs.Shutdown}, nil
	})
}

// setupHTTPProxy puts lbkit's HTTP reverse proxy, served by proxy.Server
// (the handler also works in any http.Server, see proxy.NewServer), in
// front of the backends. Clients never retry: the proxy must hide a dead
// backend by itself (retries on another backend, passive and active
// health).
func setupHTTPProxy(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), error) {
	return setupServed(cfg, bs, "/", 1, func(u *undo, pool *balancer.Pool, _ *health.Checker) (frontEnd, error) {
		// The checker follows the pool: outcomes reach it through Done.
		h, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, RetryStatuses: []int{502, 503, 504}})
		if err != nil {
			return frontEnd{}, err
		}
		u.push(func() { _ = h.Close() })
		ps, err := proxy.NewServer(proxy.ServerConfig{Handler: h})
		if err != nil {
			return frontEnd{}, err
		}
		return frontEnd{func(ln net.Listener) error { return ps.Serve(context.Background(), ln) }, ps.Shutdown}, nil
	})
}

// setupTCPProxy puts lbkit's layer-4 proxy in front of the backends.
// HTTP keep-alive connections are spread, not requests; a connection cut
// by a dying backend is re-opened by the client, which the proxy sends to
// a live backend.
func setupTCPProxy(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), error) {
	return setupServed(cfg, bs, "/", 4, func(_ *undo, pool *balancer.Pool, _ *health.Checker) (frontEnd, error) {
		p, err := tcpproxy.New(tcpproxy.Config{Pool: pool})
		if err != nil {
			return frontEnd{}, err
		}
		return frontEnd{func(ln net.Listener) error { return p.Serve(context.Background(), ln) }, p.Shutdown}, nil
	})
}
