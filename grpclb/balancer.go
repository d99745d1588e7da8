package grpclb

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	lb "github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/circuit"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	// The standard health service's client: with a healthCheckConfig in
	// the service config, a backend is ready only while it reports
	// SERVING.
	_ "google.golang.org/grpc/health"
)

// Name is the name the balancer is registered under, for service configs.
const Name = "lbkit"

func init() { balancer.Register(builder{}) }

type builder struct{}

func (builder) Name() string { return Name }

func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return ParseConfig(js)
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	name := opts.Target.String()
	b := &lbBalancer{
		cc:    cc,
		name:  name,
		conns: map[netip.AddrPort]*subConn{},
		log:   slog.Default().With("pool", name),
	}
	b.cg, _ = circuit.NewGroup(circuit.Config{}) // the zero config is valid
	return b
}

// lbBalancer is one ClientConn's balancer: an lbkit pool whose members are
// the resolver's addresses, each with one SubConn. A SubConn's connectivity
// state is its member's health: READY is Healthy (in the ready set),
// TRANSIENT_FAILURE (or the health service's NOT_SERVING) Unhealthy, and a
// member that has never been READY is HealthUnknown. The balancer's
// methods run on gRPC's serializer, one at a time.
type lbBalancer struct {
	cc    balancer.ClientConn
	name  string
	cfg   *Config
	pool  *lb.Pool
	cg    *circuit.Group
	conns map[netip.AddrPort]*subConn
	log   *slog.Logger

	resolverErr error
	closed      bool
}

// subConn is one member's connection.
type subConn struct {
	sc        balancer.SubConn
	addr      netip.AddrPort
	state     connectivity.State
	lastErr   error
	everReady bool
}

func (b *lbBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, _ := s.BalancerConfig.(*Config)
	if cfg == nil {
		cfg, _ = ParseConfig(nil)
	}
	if err := b.applyConfig(cfg); err != nil {
		return err
	}
	b.resolverErr = nil

	// The members: one per address.
	var backends []lb.Backend
	seen := map[netip.AddrPort]bool{}
	add := func(a resolver.Address) {
		ap, err := netip.ParseAddrPort(a.Addr)
		if err != nil {
			b.log.Warn("grpclb: address is not IP:port, skipped (use the dns resolver)", "addr", a.Addr)
			return
		}
		if !seen[ap] {
			seen[ap] = true
			backends = append(backends, lb.Backend{Addr: ap})
		}
		if _, ok := b.conns[ap]; ok {
			return
		}
		sc := &subConn{addr: ap, state: connectivity.Idle}
		var err2 error
		//lint:ignore SA1019 the only way a policy gets a SubConn; lbkit gives each one address, as gRPC will require.
		sc.sc, err2 = b.cc.NewSubConn([]resolver.Address{a}, balancer.NewSubConnOptions{
			HealthCheckEnabled: true,
			StateListener:      func(st balancer.SubConnState) { b.updateSubConnState(sc, st) },
		})
		if err2 != nil {
			b.log.Warn("grpclb: cannot create SubConn", "addr", a.Addr, "err", err2)
			return
		}
		b.conns[ap] = sc
		sc.sc.Connect()
	}
	if len(s.ResolverState.Endpoints) > 0 {
		for _, ep := range s.ResolverState.Endpoints {
			for _, a := range ep.Addresses {
				add(a)
			}
		}
	} else {
		for _, a := range s.ResolverState.Addresses {
			add(a)
		}
	}
	for ap, sc := range b.conns {
		if !seen[ap] {
			sc.sc.Shutdown()
			delete(b.conns, ap)
			b.cg.Forget(ap)
		}
	}
	if err := b.pool.Set(backends); err != nil {
		return fmt.Errorf("grpclb: %w", err)
	}
	if len(backends) == 0 {
		b.resolverErr = errors.New("grpclb: the resolver gave no IP:port address")
		b.publish()
		return balancer.ErrBadResolverState
	}
	b.publish()
	return nil
}

// applyConfig installs cfg, reconfiguring the pool when the policy
// changed.
func (b *lbBalancer) applyConfig(cfg *Config) error {
	if err := b.cg.Update(cfg.circuit()); err != nil {
		return fmt.Errorf("grpclb: %w", err)
	}
	if b.pool != nil && b.cfg.samePool(cfg) {
		b.cfg = cfg
		return nil
	}
	builder, err := cfg.builder()
	if err != nil {
		return err
	}
	pcfg := lb.Config{Name: b.name, Builder: builder, SlowStart: cfg.slowStart}
	if b.pool != nil {
		// A new policy: the members keep their health, in-flight
		// counts and latency estimates.
		if err := b.pool.Reconfigure(pcfg); err != nil {
			return fmt.Errorf("grpclb: %w", err)
		}
		b.cfg = cfg
		return nil
	}
	pool, err := lb.New(pcfg)
	if err != nil {
		return fmt.Errorf("grpclb: %w", err)
	}
	pool.SetJoinHealth(lb.HealthUnknown)
	b.pool, b.cfg = pool, cfg
	return nil
}

// health is the member health of a SubConn's state.
func (sc *subConn) health() lb.Health {
	switch {
	case sc.state == connectivity.Ready:
		return lb.Healthy
	case sc.state == connectivity.TransientFailure || sc.everReady:
		return lb.Unhealthy
	}
	return lb.HealthUnknown
}

func (b *lbBalancer) updateSubConnState(sc *subConn, st balancer.SubConnState) {
	if b.closed || b.conns[sc.addr] != sc {
		return // shut down
	}
	sc.state = st.ConnectivityState
	switch st.ConnectivityState {
	case connectivity.Ready:
		sc.everReady = true
	case connectivity.Idle:
		sc.sc.Connect() // keep every member connected
	case connectivity.TransientFailure:
		sc.lastErr = st.ConnectionError
	}
	b.pool.SetHealth(sc.addr, sc.health())
	b.publish()
}

// publish gives gRPC a picker over the READY SubConns and the channel's
// state: READY if any member is, CONNECTING while any is trying, else
// TRANSIENT_FAILURE.
func (b *lbBalancer) publish() {
	ready := make(map[*lb.Endpoint]member, len(b.conns))
	connecting := false
	var lastErr error
	for _, sc := range b.conns {
		switch sc.state {
		case connectivity.Ready:
			if ep := b.pool.Endpoint(sc.addr); ep != nil {
				ready[ep] = member{sc: sc.sc, brk: b.cg.Member(sc.addr)}
			}
		case connectivity.Connecting, connectivity.Idle:
			connecting = true
		case connectivity.TransientFailure:
			if sc.lastErr != nil {
				lastErr = sc.lastErr
			}
		}
	}
	switch {
	case len(ready) > 0:
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: b.newPicker(ready)})
	case connecting:
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.Connecting, Picker: errPicker{balancer.ErrNoSubConnAvailable}})
	default:
		err := b.resolverErr
		if err == nil {
			err = fmt.Errorf("grpclb: no backend is ready; last connection error: %v", lastErr)
		}
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: errPicker{err}})
	}
}

func (b *lbBalancer) ResolverError(err error) {
	b.resolverErr = fmt.Errorf("grpclb: resolver: %w", err)
	if len(b.conns) == 0 {
		b.publish()
	}
}

func (b *lbBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *lbBalancer) ExitIdle() {
	for _, sc := range b.conns {
		if sc.state == connectivity.Idle {
			sc.sc.Connect()
		}
	}
}

func (b *lbBalancer) Close() {
	b.closed = true
	for _, sc := range b.conns {
		sc.sc.Shutdown()
	}
	b.conns = nil
	if b.pool != nil {
		b.pool.Close()
	}
}

type errPicker struct{ err error }

func (p errPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{}, p.err
}
