package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/iplb"
	"github.com/lbkit/lbkit/l2lb"
)

// startOther starts the kernel data planes: iplb (nftables NAT) and l2lb
// (XDP direct server return). Both need root; their kernel state is
// removed when the listener shuts down.
func startOther(e env, l *config.Listener, pools map[string]*poolState, ls *listenerState) error {
	var err error
	switch l.Type {
	case config.TypeIPLB:
		ls.srv, err = startIPLB(e, l, pools, ls.done)
	case config.TypeL2LB:
		ls.srv, err = startL2LB(e, l, pools, ls.done)
	default:
		err = fmt.Errorf("daemon: listener %s: unknown type %q", l.Name, l.Type)
	}
	return err
}

// ---- iplb ----

type iplbServer struct {
	b    *iplb.Balancer
	log  *slog.Logger
	name string
}

func iplbService(l *config.Listener, pools map[string]*poolState) (iplb.Service, error) {
	c := l.IPLB
	ps, err := pool(l, pools, c.Pool)
	if err != nil {
		return iplb.Service{}, err
	}
	vip, err := netip.ParseAddr(c.VIP)
	if err != nil {
		return iplb.Service{}, fmt.Errorf("daemon: listener %s: vip: %w", l.Name, err)
	}
	svc := iplb.Service{Name: l.Name, VIP: netip.AddrPortFrom(vip, uint16(c.Port)), Pool: ps.pool, TableSize: c.TableSize}
	if err := svc.Proto.UnmarshalText([]byte(orDefault(string(c.Proto), "tcp"))); err != nil {
		return svc, err
	}
	if err := svc.Mode.UnmarshalText([]byte(orDefault(string(c.Mode), "gateway"))); err != nil {
		return svc, err
	}
	if c.SNAT != "" {
		if svc.SNAT, err = netip.ParseAddr(c.SNAT); err != nil {
			return svc, fmt.Errorf("daemon: listener %s: snat: %w", l.Name, err)
		}
	}
	// The scheduler: consistent hashes the pool's key (the 5-tuple when
	// the pool has none); roundrobin hashes nothing.
	switch c.Scheduler {
	case config.SchedRoundRobin:
	default:
		svc.Key = ps.cfg.Key
		if svc.Key.IsZero() {
			svc.Key = balancer.Key{Source: balancer.KeyFlow}
		}
	}
	return svc, nil
}

func startIPLB(e env, l *config.Listener, pools map[string]*poolState, done chan struct{}) (server, error) {
	svc, err := iplbService(l, pools)
	if err != nil {
		return nil, err
	}
	log := e.log.With("listener", l.Name)
	b, err := iplb.New(iplb.Config{Services: []iplb.Service{svc}, Table: "lbkit_" + l.Name, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	go func() {
		defer close(done)
		if err := b.Serve(context.Background()); err != nil {
			log.Error("daemon: iplb listener stopped", "err", err)
		}
	}()
	return &iplbServer{b: b, log: log, name: l.Name}, nil
}

func (s *iplbServer) update(l *config.Listener, pools map[string]*poolState) error {
	svc, err := iplbService(l, pools)
	if err != nil {
		return err
	}
	return s.b.UpdateService(svc)
}

func (s *iplbServer) shutdown(ctx context.Context) error { return s.b.Shutdown(ctx) }
func (s *iplbServer) close() error                       { return s.b.Close() }

var (
	descIPLBFlows = prometheusDesc("lbkit_iplb_backend_flows_total", "New flows nftables NAT sent to a backend.", "listener", "service", "member")
	descIPLBBytes = prometheusDesc("lbkit_iplb_backend_bytes_total", "Bytes of the flows nftables NAT sent to a backend.", "listener", "service", "member")
	descL2Packets = prometheusDesc("lbkit_l2lb_backend_packets_total", "Frames the XDP program forwarded to a backend.", "listener", "service", "member")
	descL2Bytes   = prometheusDesc("lbkit_l2lb_backend_bytes_total", "Bytes the XDP program forwarded to a backend.", "listener", "service", "member")
	descL2Dropped = prometheusDesc("lbkit_l2lb_packets_dropped_total", "Frames the XDP program dropped, by reason.", "listener", "reason")
	kernelDescs   = []*prometheus.Desc{descIPLBFlows, descIPLBBytes, descL2Packets, descL2Bytes, descL2Dropped}
)

func (s *iplbServer) collect(name string, ch chan<- prometheus.Metric) {
	stats, err := s.b.Stats()
	if err != nil {
		return
	}
	for _, svc := range stats {
		for _, b := range svc.Backends {
			ch <- prometheus.MustNewConstMetric(descIPLBFlows, prometheus.CounterValue, float64(b.Flows), name, svc.Name, b.Addr.String())
			ch <- prometheus.MustNewConstMetric(descIPLBBytes, prometheus.CounterValue, float64(b.Bytes), name, svc.Name, b.Addr.String())
		}
	}
}

// ---- l2lb ----

type l2lbServer struct {
	b   *l2lb.Balancer
	log *slog.Logger
}

func l2lbServices(l *config.Listener, pools map[string]*poolState) ([]l2lb.Service, error) {
	var out []l2lb.Service
	for _, v := range l.L2LB.VIPs {
		ps, err := pool(l, pools, v.Pool)
		if err != nil {
			return nil, err
		}
		vip, err := netip.ParseAddr(v.VIP)
		if err != nil {
			return nil, fmt.Errorf("daemon: listener %s: vip: %w", l.Name, err)
		}
		svc := l2lb.Service{VIP: netip.AddrPortFrom(vip, uint16(v.Port)), Pool: ps.pool, Key: ps.cfg.Key}
		if err := svc.Proto.UnmarshalText([]byte(orDefault(string(v.Proto), "tcp"))); err != nil {
			return nil, err
		}
		out = append(out, svc)
	}
	return out, nil
}

func startL2LB(e env, l *config.Listener, pools map[string]*poolState, done chan struct{}) (server, error) {
	svcs, err := l2lbServices(l, pools)
	if err != nil {
		return nil, err
	}
	log := e.log.With("listener", l.Name)
	c := l.L2LB
	cfg := l2lb.Config{Interface: c.Interface, Services: svcs, MaxBackends: c.MaxBackends, ConnTableSize: c.ConnTableSize, ResolveInterval: c.ResolveInterval, Logger: log}
	if c.Attach != "" {
		if err := cfg.Mode.UnmarshalText([]byte(c.Attach)); err != nil {
			return nil, err
		}
	}
	b, err := l2lb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	go func() {
		defer close(done)
		if err := b.Serve(context.Background()); err != nil {
			log.Error("daemon: l2lb listener stopped", "err", err)
		}
	}()
	return &l2lbServer{b: b, log: log}, nil
}

func (s *l2lbServer) update(l *config.Listener, pools map[string]*poolState) error {
	svcs, err := l2lbServices(l, pools)
	if err != nil {
		return err
	}
	return s.b.SetServices(svcs)
}

func (s *l2lbServer) shutdown(ctx context.Context) error { return s.b.Shutdown(ctx) }
func (s *l2lbServer) close() error                       { return s.b.Close() }

func (s *l2lbServer) collect(name string, ch chan<- prometheus.Metric) {
	st, err := s.b.Stats()
	if err != nil {
		return
	}
	for _, svc := range st.Services {
		for _, b := range svc.Backends {
			ch <- prometheus.MustNewConstMetric(descL2Packets, prometheus.CounterValue, float64(b.Packets), name, svc.VIP.String(), b.Addr.String())
			ch <- prometheus.MustNewConstMetric(descL2Bytes, prometheus.CounterValue, float64(b.Bytes), name, svc.VIP.String(), b.Addr.String())
		}
	}
	ch <- prometheus.MustNewConstMetric(descL2Dropped, prometheus.CounterValue, float64(st.NoBackend), name, "no_backend")
	ch <- prometheus.MustNewConstMetric(descL2Dropped, prometheus.CounterValue, float64(st.Dropped-st.NoBackend), name, "other")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
