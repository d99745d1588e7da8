package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// DefaultInterval is how often host names are resolved again when a
// source's Interval is zero.
const DefaultInterval = 30 * time.Second

// StaticConfig configures a Static source.
type StaticConfig struct {
	// Members are the members, in order. Their addresses may name hosts.
	Members []Member `json:"members" yaml:"members"`
	// Interval is how often host names are resolved again. Zero means
	// DefaultInterval. A source of IP addresses only never resolves.
	Interval time.Duration `json:"interval,omitempty" yaml:"interval,omitempty"`
	// Network is which addresses a host name gives: "ip" (IPv4 and
	// IPv6), "ip4" or "ip6". Empty means "ip".
	Network string `json:"network,omitempty" yaml:"network,omitempty"`
	// Resolver resolves host names (the system's hosts file, then DNS).
	// Nil means net.DefaultResolver. Tests point a resolver's Dial at
	// their own DNS server.
	Resolver *net.Resolver `json:"-" yaml:"-"`
}

// Static is a Source of fixed members whose host names are resolved
// again every Interval, so a member named web-1.example.test follows
// its DNS records. Create one with NewStatic. Its Watch may run in one
// goroutine at a time.
type Static struct {
	targets  []target
	interval time.Duration
	hosts    hostResolver
}

var _ Source = (*Static)(nil)

// NewStatic checks cfg and returns its source.
func NewStatic(cfg StaticConfig) (*Static, error) {
	ts, err := parseMembers(cfg.Members)
	if err != nil {
		return nil, err
	}
	network, err := checkNetwork(cfg.Network)
	if err != nil {
		return nil, err
	}
	if cfg.Interval < 0 {
		return nil, errors.New("discovery: static: negative interval")
	}
	s := &Static{targets: ts, interval: cfg.Interval, hosts: hostResolver{resolver: cfg.Resolver, network: network}}
	if s.interval == 0 {
		s.interval = DefaultInterval
	}
	return s, nil
}

// String names the source in log lines.
func (s *Static) String() string {
	return fmt.Sprintf("static(%d members)", len(s.targets))
}

// Watch reports the members at once, then again every Interval while
// any of them names a host; a name that does not resolve keeps its last
// addresses and is reported to sink.Fail. It returns nil when ctx ends.
func (s *Static) Watch(ctx context.Context, sink Sink) error {
	var tick <-chan time.Time
	if hasHosts(s.targets) {
		t := time.NewTicker(s.interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		set, err := s.hosts.backends(ctx, s.targets)
		if ctx.Err() != nil {
			return nil
		}
		sink.Set(set)
		if err != nil {
			sink.Fail(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		}
	}
}
