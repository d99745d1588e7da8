package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/discovery"
	etcddisc "github.com/lbkit/lbkit/discovery/etcd"
)

// A pool's membership comes from one of two places. A pool whose members
// are all IP literals and which declares no discovery source gets them
// with one Pool.Set when it starts and at each reload that changes them.
// Any other pool (a member named by host, a dns, file or etcd source) has
// a discovery loop: a discovery.Syncer that runs as long as the pool and
// is the only writer of its membership, so health checks, slow start and
// every listener follow discovery with no other code. A reload that
// changes the pool's members or sources replaces the loop; the pool keeps
// its members (and their state) until the new loop's first answer.

// memberPlan is how a pool's membership is to be kept, computed before a
// reload commits (building sources can fail; applying the plan cannot).
type memberPlan struct {
	static  []balancer.Backend // no discovery: these members
	sources []discovery.Source // discovery: the loop's sources, static members first
}

// planMembers returns the membership plan of p. Host names in static
// members and in the members file resolve through r.
func planMembers(p *config.Pool, r *net.Resolver) (memberPlan, error) {
	if !usesDiscovery(p) {
		bs := make([]balancer.Backend, 0, len(p.Members))
		for i := range p.Members {
			m := &p.Members[i]
			ap, _ := m.AddrPort()
			bs = append(bs, balancer.Backend{Addr: ap, Weight: uint32(m.Weight), Zone: m.Zone, Meta: m.Meta})
		}
		return memberPlan{static: bs}, nil
	}
	var plan memberPlan
	ds := &p.Discovery
	add := func(src discovery.Source, err error) error {
		if err != nil {
			return fmt.Errorf("daemon: pool %s: %w", p.Name, err)
		}
		plan.sources = append(plan.sources, src)
		return nil
	}
	if len(p.Members) > 0 {
		ms := make([]discovery.Member, len(p.Members))
		for i := range p.Members {
			ms[i] = p.Members[i].DiscoveryMember()
		}
		if err := add(discovery.NewStatic(discovery.StaticConfig{Members: ms, Interval: ds.Interval, Resolver: r})); err != nil {
			return memberPlan{}, err
		}
	}
	if s := ds.DNS; s != nil {
		if err := add(discovery.NewDNS(discovery.DNSConfig{
			Name: s.Name, Type: s.Type, Port: uint16(s.Port), Servers: s.Servers,
			MinTTL: s.MinTTL, MaxTTL: s.MaxTTL, Timeout: s.Timeout,
		})); err != nil {
			return memberPlan{}, err
		}
	}
	if f := ds.File; f != nil {
		if err := add(discovery.NewFile(discovery.FileConfig{Path: f.Path, Interval: ds.Interval, Resolver: r})); err != nil {
			return memberPlan{}, err
		}
	}
	if e := ds.Etcd; e != nil {
		if err := add(etcddisc.New(etcddisc.Config{
			Endpoints: e.Endpoints, Prefix: e.Prefix, DialTimeout: e.DialTimeout, RequestTimeout: e.RequestTimeout,
		})); err != nil {
			return memberPlan{}, err
		}
	}
	return plan, nil
}

// usesDiscovery reports whether p's membership needs a discovery loop: a
// source, or a member named by host.
func usesDiscovery(p *config.Pool) bool {
	ds := &p.Discovery
	if ds.DNS != nil || ds.File != nil || ds.Etcd != nil {
		return true
	}
	for i := range p.Members {
		if _, ok := p.Members[i].AddrPort(); !ok {
			return true
		}
	}
	return false
}

// discoveryLoop is a running discovery.Syncer of one pool.
type discoveryLoop struct {
	syncer *discovery.Syncer
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the loop and waits for it; the pool keeps its members.
func (l *discoveryLoop) stop() {
	if l == nil {
		return
	}
	l.cancel()
	<-l.done
}

// applyMembers keeps ps's membership as plan says: it stops the running
// discovery loop, if any, then sets the static members or starts a new
// loop. It is called when the pool starts and when a reload changes its
// members or discovery, with the pool's lock (the daemon's) held.
func (ps *poolState) applyMembers(plan memberPlan, log *slog.Logger) error {
	ps.disc.stop()
	ps.disc = nil
	if plan.sources == nil {
		if err := ps.pool.Set(plan.static); err != nil {
			return fmt.Errorf("daemon: pool %s: %w", ps.cfg.Name, err)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &discoveryLoop{
		syncer: &discovery.Syncer{Pool: ps.pool, Sources: plan.sources, Logger: log},
		cancel: cancel, done: make(chan struct{}),
	}
	go func() {
		defer close(l.done)
		if err := l.syncer.Run(ctx); err != nil {
			log.Error("daemon: discovery stopped", "pool", ps.cfg.Name, "err", err)
		}
	}()
	ps.disc = l
	return nil
}

// discoveryStatus returns the state of each of the pool's discovery
// sources, or nil when the pool has no discovery loop.
func (ps *poolState) discoveryStatus() []SourceStatus {
	if ps.disc == nil {
		return nil
	}
	var out []SourceStatus
	for _, s := range ps.disc.syncer.Status() {
		st := SourceStatus{Source: s.Source, Reported: s.Reported, Members: s.Members, Updated: s.Updated}
		if s.Err != nil {
			st.Error = s.Err.Error()
		}
		out = append(out, st)
	}
	return out
}

// SourceStatus is one discovery source of a pool, in /status.
type SourceStatus struct {
	// Source names the source: static(N members), dns(NAME TYPE),
	// file(PATH), etcd(PREFIX).
	Source string `json:"source"`
	// Reported tells whether the source has reported members since the
	// pool's discovery started; Members is how many it last reported, at
	// Updated.
	Reported bool      `json:"reported"`
	Members  int       `json:"members"`
	Updated  time.Time `json:"updated,omitzero"`
	// Error is the source's last failure since its last report: its last
	// members stay in the pool meanwhile.
	Error string `json:"error,omitempty"`
}
