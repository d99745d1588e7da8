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
)

// healthInterval is how often the demo's health checker probes each
// backend; a killed backend (connection refused) leaves every pool within
// about one interval. The probe timeout is longer, so a backend that is
// merely slow under the experiment's load is not taken out.
const (
	healthInterval = 100 * time.Millisecond
	healthTimeout  = 2 * time.Second
)

// newPool returns a pool over bs kept in step with a health checker that
// probes each backend by TCP connect. stop ends the checking.
func newPool(bs []*backend, b balancer.Builder) (*balancer.Pool, *health.Checker, func(), error) {
	return newPoolProbe(bs, b, health.TCP{})
}

// newPoolProbe is newPool with the given probe.
func newPoolProbe(bs []*backend, b balancer.Builder, probe health.Prober) (*balancer.Pool, *health.Checker, func(), error) {
	pool, err := balancer.New(balancer.Config{Builder: b})
	if err != nil {
		return nil, nil, nil, err
	}
	members := make([]balancer.Backend, len(bs))
	for i, be := range bs {
		members[i] = balancer.Backend{Addr: be.addr}
	}
	if err := pool.Set(members); err != nil {
		return nil, nil, nil, err
	}
	chk, err := health.New(health.Config{})
	if err != nil {
		return nil, nil, nil, err
	}
	for _, be := range bs {
		err := chk.SetTarget(health.Target{
			Addr: be.addr, Probe: probe, Interval: healthInterval,
			Timeout: healthTimeout, Fall: 1, Rise: 2, Initial: health.Healthy,
		})
		if err != nil {
			_ = chk.Close()
			return nil, nil, nil, err
		}
	}
	stopDrive := chk.Drive(pool)
	stop := func() {
		stopDrive()
		_ = chk.Close()
		_ = pool.Close()
	}
	return pool, chk, stop, nil
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

// setupRedirect puts a redirect.Handler in front of the backends: every
// client asks the dispatcher and follows its 302 to a backend.
func setupRedirect(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), string, error) {
	pool, _, stopHealth, err := newPool(bs, roundrobin.Builder{})
	if err != nil {
		return nil, nil, "", err
	}
	targets := make([]redirect.Target, len(bs))
	for i, b := range bs {
		targets[i] = redirect.Target{URL: "http://" + b.addr.String()}
	}
	h, err := redirect.New(redirect.Config{Backends: targets, Pool: pool})
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	// redirect.Server answers the handler's redirects without net/http's
	// per-request cost; the Handler also works in any http.Server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	rs := &redirect.Server{Handler: h}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rs.Serve(context.Background(), ln)
	}()
	stopSrv := func() {
		sd, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rs.Shutdown(sd)
		<-done
	}
	base := "http://" + ln.Addr().String()
	c := httpClient(cfg, true)
	do := func(ctx context.Context, i int) error {
		return retry(ctx, 4, func() error { return get(ctx, c, base+"/index.html") })
	}
	cleanup := func() {
		c.CloseIdleConnections()
		stopSrv()
		_ = h.Close()
		stopHealth()
	}
	return do, cleanup, "", nil
}

// setupDNS serves the backends' addresses from dnslb: every client
// resolves the service name (one weighted pick per answer, TTL 1 s), then
// connects to the address it got on the backends' shared port.
func setupDNS(ctx context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), string, error) {
	pool, _, stopHealth, err := newPool(bs, roundrobin.Builder{})
	if err != nil {
		return nil, nil, "", err
	}
	const name = "www.demo.lbkit.test."
	srv, err := dnslb.New(dnslb.Config{
		Zones:      []dnslb.Zone{{Origin: "demo.lbkit.test.", Records: "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 5\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"}},
		Services:   []dnslb.Service{{Name: name, Pool: pool, Policy: dnslb.PolicyWeighted, Count: 1, TTL: time.Second}},
		UDPSockets: 2,
	})
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	sctx, cancel := context.WithCancel(ctx)
	udp, tcp, err := dnslb.Listen(sctx, "127.0.0.1:0", 2)
	if err != nil {
		cancel()
		stopHealth()
		return nil, nil, "", err
	}
	server := udp[0].LocalAddr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, udp, []net.Listener{tcp}) }()

	port := bs[0].addr.Port()
	c := httpClient(cfg, true)
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
	cleanup := func() {
		c.CloseIdleConnections()
		cancel()
		if err := <-served; err != nil && !errors.Is(err, context.Canceled) {
			fmt.Println("dns server:", err)
		}
		stopHealth()
	}
	return do, cleanup, "", nil
}

// setupHTTPProxy puts lbkit's HTTP reverse proxy in front of the
// backends. Clients never retry: the proxy must hide a dead backend by
// itself (retries on another backend, passive and active health).
func setupHTTPProxy(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), string, error) {
	pool, chk, stopHealth, err := newPool(bs, roundrobin.Builder{})
	if err != nil {
		return nil, nil, "", err
	}
	h, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Observer: chk, RetryStatuses: []int{502, 503, 504}})
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	srv := proxy.NewServer(h)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	base := "http://" + ln.Addr().String()
	c := httpClient(cfg, true)
	do := func(ctx context.Context, i int) error { return get(ctx, c, base+"/") }
	cleanup := func() {
		c.CloseIdleConnections()
		_ = srv.Close()
		<-done
		_ = h.Close()
		stopHealth()
	}
	return do, cleanup, "", nil
}

// setupTCPProxy puts lbkit's layer-4 proxy in front of the backends.
// HTTP keep-alive connections are spread, not requests; a connection cut
// by a dying backend is re-opened by the client, which the proxy sends to
// a live backend.
func setupTCPProxy(ctx context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), string, error) {
	pool, chk, stopHealth, err := newPool(bs, roundrobin.Builder{})
	if err != nil {
		return nil, nil, "", err
	}
	p, err := proxy.NewTCP(proxy.TCPConfig{Pool: pool, Observer: chk})
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stopHealth()
		return nil, nil, "", err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Serve(sctx, ln)
	}()
	base := "http://" + ln.Addr().String()
	c := httpClient(cfg, true)
	do := func(ctx context.Context, i int) error {
		return retry(ctx, 4, func() error { return get(ctx, c, base+"/") })
	}
	cleanup := func() {
		c.CloseIdleConnections()
		sd, cancelSD := context.WithTimeout(context.Background(), 5*time.Second)
		_ = p.Shutdown(sd)
		cancelSD()
		cancel()
		<-done
		stopHealth()
	}
	return do, cleanup, "", nil
}
