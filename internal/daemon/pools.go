package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ewma"
	"github.com/lbkit/lbkit/balancer/first"
	"github.com/lbkit/lbkit/balancer/leastconn"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/random"
	"github.com/lbkit/lbkit/balancer/rendezvous"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/sourcehash"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/health/dnsprobe"
)

// poolState is a running pool: the balancer pool every listener that
// names it serves from, and the health checker that follows it. Each pool
// has its own checker, because passive outlier settings are per pool.
type poolState struct {
	cfg     config.Pool
	pool    *balancer.Pool
	checker *health.Checker
	events  *lastEvents
	unsub   func()
}

// builder returns the policy of p.
func builder(p *config.Pool) (balancer.Builder, error) {
	switch p.Policy {
	case config.PolicyRoundRobin, "":
		return roundrobin.Builder{}, nil
	case config.PolicyWeighted:
		return weighted.Builder{}, nil
	case config.PolicyRandom:
		return random.Builder{}, nil
	case config.PolicyLeastConn:
		return leastconn.Builder{ScanLimit: p.ScanLimit}, nil
	case config.PolicyEWMA:
		return ewma.Builder{}, nil
	case config.PolicyRingHash:
		eps := 0.0
		if p.LoadFactor > 0 {
			eps = p.LoadFactor - 1
		}
		return ringhash.Builder{PointsPerWeight: p.PointsPerWeight, MinRingSize: p.MinRingSize, MaxRingSize: p.MaxRingSize, Epsilon: eps}, nil
	case config.PolicyMaglev:
		return maglev.Builder{Size: p.TableSize}, nil
	case config.PolicyRendezvous:
		return rendezvous.Builder{}, nil
	case config.PolicySourceHash:
		ht := sourcehash.Consistent
		if p.HashType == config.HashMapBased {
			ht = sourcehash.MapBased
		}
		return sourcehash.Builder{HashType: ht, Size: p.TableSize}, nil
	case config.PolicyFirst:
		return first.Builder{}, nil
	}
	return nil, fmt.Errorf("daemon: pool %s: unknown policy %q", p.Name, p.Policy)
}

// poolConfig returns the balancer configuration of p.
func poolConfig(p *config.Pool, log *slog.Logger) (balancer.Config, error) {
	b, err := builder(p)
	if err != nil {
		return balancer.Config{}, err
	}
	return balancer.Config{
		Name: p.Name, Builder: b, SlowStart: p.SlowStart, SlowStartMinWeight: p.SlowStartMinWeight,
		PanicThreshold: p.PanicThreshold, LocalZone: p.LocalZone, LocalZoneMinReady: p.LocalZoneMinReady,
		EWMADecay: p.EWMADecay, Logger: log,
	}, nil
}

// members resolves p's members: IP literals as they are, host names
// through the resolver (every address a name has becomes a member, with
// the name's weight, zone and meta).
func members(ctx context.Context, p *config.Pool, r *net.Resolver) ([]balancer.Backend, error) {
	var out []balancer.Backend
	seen := make(map[netip.AddrPort]bool)
	for i := range p.Members {
		m := &p.Members[i]
		add := func(ap netip.AddrPort) {
			if seen[ap] {
				return
			}
			seen[ap] = true
			out = append(out, balancer.Backend{Addr: ap, Weight: uint32(m.Weight), Zone: m.Zone, Meta: m.Meta})
		}
		if ap, ok := m.AddrPort(); ok {
			add(ap)
			continue
		}
		host, port, err := net.SplitHostPort(m.Addr)
		if err != nil {
			return nil, fmt.Errorf("daemon: pool %s: member %q: %w", p.Name, m.Addr, err)
		}
		pn, err := net.LookupPort("tcp", port)
		if err != nil {
			return nil, fmt.Errorf("daemon: pool %s: member %q: %w", p.Name, m.Addr, err)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := r.LookupNetIP(rctx, "ip", host)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("daemon: pool %s: member %q: %w", p.Name, m.Addr, err)
		}
		for _, a := range addrs {
			add(netip.AddrPortFrom(a.Unmap(), uint16(pn)))
		}
	}
	return out, nil
}

// healthTemplate returns the health template of p.
func healthTemplate(p *config.Pool) (health.Template, error) {
	h := &p.Health
	t := health.Template{
		Interval: h.Interval, Timeout: h.Timeout, Jitter: h.Jitter, DownInterval: h.DownInterval,
		FastInterval: h.FastInterval, Rise: h.Rise, Fall: h.Fall,
	}
	switch h.Initial {
	case config.InitialHealthy:
		t.Initial = health.Healthy
	case config.InitialUnhealthy:
		t.Initial = health.Unhealthy
	}
	switch h.Type {
	case config.ProbeTCP, "":
		t.Probe = health.TCP{}
	case config.ProbeHTTP, config.ProbeHTTPS:
		hp := health.HTTP{Method: h.Method, Path: h.Path, Host: h.Host, BodyContains: h.BodyContains, AgentHeader: h.AgentHeader}
		if h.Type == config.ProbeHTTPS {
			hp.Scheme = "https"
			if h.InsecureSkipVerify {
				hp.TLSConfig = insecureTLS()
			}
		}
		if h.Status != "" {
			lo, hi, err := config.ParseStatusRange(h.Status)
			if err != nil {
				return t, err
			}
			hp.StatusMin, hp.StatusMax = lo, hi
		}
		t.Probe = hp
	case config.ProbeUDP:
		t.Probe = health.UDP{Send: []byte(h.Send), Expect: []byte(h.Expect)}
	case config.ProbeAgent:
		t.Probe = health.Agent{Send: []byte(h.Send)}
	case config.ProbeDNS:
		q := dnsprobe.Query{Name: h.Query, WantAnswer: h.WantAnswer, Net: h.Net}
		if h.QueryType != "" {
			typ, ok := dns.StringToType[strings.ToUpper(h.QueryType)]
			if !ok {
				return t, fmt.Errorf("daemon: pool %s: unknown query type %q", p.Name, h.QueryType)
			}
			q.Type = typ
		}
		if h.Rcode != "" {
			rc, ok := dns.StringToRcode[strings.ToUpper(h.Rcode)]
			if !ok {
				return t, fmt.Errorf("daemon: pool %s: unknown rcode %q", p.Name, h.Rcode)
			}
			q.WantRcode = rc
		}
		t.Probe = q
	case config.ProbeNone:
		t.Probe = nil
	default:
		return t, fmt.Errorf("daemon: pool %s: unknown probe type %q", p.Name, h.Type)
	}
	if h.Port != 0 && t.Probe != nil {
		t.Probe = portProbe{t.Probe, uint16(h.Port)}
	}
	return t, nil
}

// portProbe probes a member on another port (a health port beside the
// service port).
type portProbe struct {
	p    health.Prober
	port uint16
}

func (pp portProbe) Probe(ctx context.Context, a netip.AddrPort) (health.Report, error) {
	return pp.p.Probe(ctx, netip.AddrPortFrom(a.Addr(), pp.port))
}

// passive returns p's outlier detection settings.
func passive(p *config.Pool) health.PassiveConfig {
	q := &p.Passive
	return health.PassiveConfig{
		Disabled: q.Disabled, ConsecutiveFailures: q.ConsecutiveFailures, FailureRate: q.FailureRate,
		Window: q.Window, Buckets: q.Buckets, MinRequests: q.MinRequests, LatencyThreshold: q.LatencyThreshold,
		LatencyMinSlow: q.LatencyMinSlow, LatencyRate: q.LatencyRate, BaseEjection: q.BaseEjection,
		MaxEjection: q.MaxEjection, MaxEjectedPercent: q.MaxEjectedPercent, HoldEjection: q.HoldEjection,
	}
}

// newPool starts a pool: balancer pool, members, checker following it.
func newPool(ctx context.Context, p *config.Pool, log *slog.Logger, r *net.Resolver) (*poolState, error) {
	bc, err := poolConfig(p, log)
	if err != nil {
		return nil, err
	}
	bs, err := members(ctx, p, r)
	if err != nil {
		return nil, err
	}
	tmpl, err := healthTemplate(p)
	if err != nil {
		return nil, err
	}
	bp, err := balancer.New(bc)
	if err != nil {
		return nil, fmt.Errorf("daemon: pool %s: %w", p.Name, err)
	}
	ps := &poolState{cfg: *p, pool: bp, events: newLastEvents()}
	if err := ps.startChecker(log, tmpl); err != nil {
		return nil, err
	}
	if err := bp.Set(bs); err != nil {
		ps.close()
		return nil, fmt.Errorf("daemon: pool %s: %w", p.Name, err)
	}
	return ps, nil
}

func (ps *poolState) startChecker(log *slog.Logger, tmpl health.Template) error {
	chk, err := health.New(health.Config{Logger: log.With("pool", ps.cfg.Name), Passive: passive(&ps.cfg)})
	if err != nil {
		return fmt.Errorf("daemon: pool %s: %w", ps.cfg.Name, err)
	}
	if err := chk.Follow(ps.pool, tmpl); err != nil {
		chk.Close()
		return err
	}
	ps.checker = chk
	ps.unsub = chk.Subscribe(ps.events.record)
	return nil
}

// prepare readies a new declaration of the same pool and returns the
// function that applies it, keeping the members' state: members through
// Set, settings through Reconfigure, the health template through Follow,
// and a new checker only when the passive settings changed (their window
// is the checker's). Everything that can fail (resolving members,
// building the policy) happens in prepare, so a reload that fails changes
// nothing.
func (ps *poolState) prepare(ctx context.Context, p *config.Pool, ch config.PoolChange, log *slog.Logger, r *net.Resolver) (func() error, error) {
	var bc balancer.Config
	var tmpl health.Template
	var bs []balancer.Backend
	var err error
	if ch.Settings {
		if bc, err = poolConfig(p, log); err != nil {
			return nil, err
		}
	}
	if ch.Health {
		if tmpl, err = healthTemplate(p); err != nil {
			return nil, err
		}
	}
	if ch.Members {
		if bs, err = members(ctx, p, r); err != nil {
			return nil, err
		}
	}
	return func() error {
		if ch.Settings {
			if err := ps.pool.Reconfigure(bc); err != nil {
				return fmt.Errorf("daemon: pool %s: %w", p.Name, err)
			}
		}
		if ch.Members {
			if err := ps.pool.Set(bs); err != nil {
				return fmt.Errorf("daemon: pool %s: %w", p.Name, err)
			}
			// An operator's override lasts until the configuration
			// changes the member.
			for _, a := range ch.MembersChanged {
				if ap, err := netip.ParseAddrPort(a); err == nil {
					ps.pool.SetOverride(ap, balancer.Override{})
				}
			}
		}
		old := ps.cfg
		ps.cfg = *p
		if ch.Health {
			if passive(&old) != passive(p) {
				ps.unsub()
				ps.checker.Close()
				return ps.startChecker(log, tmpl)
			}
			return ps.checker.Follow(ps.pool, tmpl)
		}
		return nil
	}, nil
}

func (ps *poolState) close() {
	if ps.unsub != nil {
		ps.unsub()
	}
	if ps.checker != nil {
		ps.checker.Close()
	}
	ps.pool.Close()
}

// errNoPool reports a listener naming a pool the configuration lacks (Load
// checks this; the daemon checks again).
func errNoPool(listener, pool string) error {
	return fmt.Errorf("daemon: listener %s: %w %q", listener, ErrNoPool, pool)
}

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } //nolint:gosec // the operator asked for it
