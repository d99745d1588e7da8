//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/iplb"
	"github.com/lbkit/lbkit/l2lb"
)

// labStrategies lists the kernel data planes. They run inside a network
// namespace lab that the demo builds and removes: a client, a balancer and
// the backends on one bridge, addresses from 198.18.0.0/24, never joined
// to the host's network.
func labStrategies() []strategy {
	return []strategy{
		{name: "iplb-nat", run: runIPLB},
		{name: "l2lb-dsr", run: runL2LB},
	}
}

// labVIP is the virtual IP the lab's clients connect to.
var labVIP = netip.MustParseAddr("198.18.0.200")

// labEnv is a built lab: client, balancer host and backends.
type labEnv struct {
	lab        *netlab.Lab
	client, lb *netlab.Host
	hosts      []*netlab.Host
	bs         []*backend
}

// openLab builds a lab for the demo, or says why it cannot (skip).
func openLab(cfg demoConfig) (env *labEnv, skip string, err error) {
	if os.Geteuid() != 0 {
		return nil, "needs root: it builds a network-namespace lab and programs the kernel (run the demo with sudo)", nil
	}
	lab, err := netlab.Open(netlab.Config{Prefix: "lbkdemo"})
	if errors.Is(err, netlab.ErrNotPermitted) {
		return nil, "network namespaces are not permitted here: " + err.Error(), nil
	}
	if err != nil {
		return nil, "", err
	}
	env = &labEnv{lab: lab}
	defer func() {
		if err != nil {
			env.close()
			env = nil
		}
	}()
	if env.client, err = lab.AddHost("client"); err != nil {
		return env, "", err
	}
	if env.lb, err = lab.AddHost("lb"); err != nil {
		return env, "", err
	}
	for i := range cfg.backends {
		h, err := lab.AddHost(fmt.Sprintf("be%d", i+1))
		if err != nil {
			return env, "", err
		}
		ln, err := h.Listen("tcp", ":80")
		if err != nil {
			return env, "", err
		}
		env.hosts = append(env.hosts, h)
		b, err := newBackend(ln, netip.AddrPortFrom(h.Addr4(), 80), i, cfg.model)
		if err != nil {
			return env, "", err
		}
		env.bs = append(env.bs, b)
	}
	return env, "", env.reach(env.lb, env.bs)
}

// reach connects from h to every backend once (and closes), retrying for
// a few seconds. A lab is used moments after it is built, and a packet
// sent then can be lost (the bridge port is not forwarding yet); when the
// lost packet is an ARP request, the kernel asks again only after a
// second, and every flow to that backend stalls meanwhile: with keep-alive
// clients, the other backends' connections then took all the work (a row
// like 277/0/323). Afterwards h's neighbour entries are resolved.
func (env *labEnv) reach(h *netlab.Host, bs []*backend) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range bs {
		for {
			c, err := h.DialContext(ctx, "tcp", b.addr.String())
			if err == nil {
				_ = c.Close()
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("lab: %s cannot reach backend %v: %w", h.Name(), b.addr, err)
			}
		}
	}
	return nil
}

func (env *labEnv) close() {
	for _, b := range env.bs {
		b.kill()
	}
	_ = env.lab.Close()
}

// probe is a TCP-connect health probe run from the balancer's namespace.
func (env *labEnv) probe() health.Prober {
	return health.ProberFunc(func(ctx context.Context, addr netip.AddrPort) (health.Report, error) {
		c, err := env.lb.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return health.Report{}, err
		}
		return health.Report{}, c.Close()
	})
}

// driveLab runs the experiment from the lab's client against the VIP. The
// client reconnects (retries) when a connection breaks, as an L4 client
// must: the balancer moves new flows, not broken ones.
func driveLab(ctx context.Context, cfg demoConfig, name string, env *labEnv, progress io.Writer) result {
	c := httpClientDial(cfg, true, env.client.DialContext)
	defer c.CloseIdleConnections()
	url := "http://" + netip.AddrPortFrom(labVIP, 80).String() + "/"
	return drive(ctx, cfg, name, env.bs, func(ctx context.Context, i int) error {
		return retry(ctx, 4, func() error { return get(ctx, c, url) })
	}, progress)
}

// runL2LB: direct server return by MAC rewrite in XDP. The VIP is on the
// balancer's interface (it answers ARP); backends carry it on lo with
// arp_ignore=1, arp_announce=2 and answer the client directly.
func runL2LB(ctx context.Context, cfg demoConfig, progress io.Writer) (result, error) {
	const name = "l2lb-dsr"
	env, skip, err := openLab(cfg)
	if skip != "" || err != nil {
		return result{name: name, skip: skip}, err
	}
	defer env.close()
	if err := env.lb.AddAddr(netip.PrefixFrom(labVIP, 32), "eth0"); err != nil {
		return result{}, err
	}
	for _, h := range env.hosts {
		if err := h.AddAddr(netip.PrefixFrom(labVIP, 32), "lo"); err != nil {
			return result{}, err
		}
		for _, dev := range []string{"all", "eth0"} {
			for key, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2", "rp_filter": "0"} {
				if err := h.Sysctl("net.ipv4.conf."+dev+"."+key, v); err != nil {
					return result{}, err
				}
			}
		}
		if err := l2lb.CheckBackend(h.Do, labVIP); err != nil {
			return result{}, err
		}
	}
	var u undo
	defer u.run()
	pool, _, err := newPool(&u, env.bs, maglev.Builder{}, env.probe())
	if err != nil {
		return result{}, err
	}
	var bal *l2lb.Balancer
	err = env.lb.Do(func() (err error) {
		bal, err = l2lb.New(l2lb.Config{
			Interface:       "eth0",
			Mode:            l2lb.AttachGeneric, // veth in a lab: see the l2lb package doc
			Services:        []l2lb.Service{{VIP: netip.AddrPortFrom(labVIP, 80), Pool: pool}},
			ResolveInterval: 100 * time.Millisecond,
		})
		return err
	})
	if err != nil {
		return result{}, err
	}
	go bal.Serve(ctx)
	defer bal.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := bal.Sync(sctx); err != nil {
		return result{}, err
	}
	r := driveLab(ctx, cfg, name, env, progress)
	if st, err := bal.Stats(); err == nil {
		r.note = fmt.Sprintf("XDP forwarded %d packets (client→server only: replies bypass the balancer), passed %d", st.Forwarded, st.Passed)
	}
	return r, nil
}

// runIPLB: layer-3/4 NAT in the kernel (nftables + conntrack) in FullNAT
// mode: the balancer rewrites destination and source, so backends need no
// route through it. The VIP is on the balancer's interface.
func runIPLB(ctx context.Context, cfg demoConfig, progress io.Writer) (result, error) {
	const name = "iplb-nat"
	env, skip, err := openLab(cfg)
	if skip != "" || err != nil {
		return result{name: name, skip: skip}, err
	}
	defer env.close()
	if err := env.lb.AddAddr(netip.PrefixFrom(labVIP, 32), "eth0"); err != nil {
		return result{}, err
	}
	if err := env.lb.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return result{}, err
	}
	var u undo
	defer u.run()
	pool, _, err := newPool(&u, env.bs, maglev.Builder{}, env.probe())
	if err != nil {
		return result{}, err
	}
	bal, err := iplb.New(iplb.Config{NetNS: int(env.lb.NS()), Services: []iplb.Service{{
		Name: "demo", VIP: netip.AddrPortFrom(labVIP, 80), Mode: iplb.FullNAT, Key: balancer.Key{Source: balancer.KeyFlow}, Pool: pool,
	}}})
	if err != nil {
		return result{}, err
	}
	go bal.Serve(ctx)
	defer bal.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := bal.Sync(sctx); err != nil {
		return result{}, err
	}
	r := driveLab(ctx, cfg, name, env, progress)
	if st, err := bal.Stats(); err == nil && len(st) > 0 {
		r.note = fmt.Sprintf("nftables steered %d new flows through %d Maglev slots; conntrack carried the rest", st[0].Flows, st[0].TableSize)
	}
	return r, nil
}
