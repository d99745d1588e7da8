package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/dnslb"
	"github.com/lbkit/lbkit/tcpproxy"
)

// server is a running listener: every front-end, whatever its strategy,
// is driven through this one shape.
type server interface {
	// update applies a new declaration with the same type and address,
	// keeping the socket and the connections; it returns errReplace when
	// the change needs a new server.
	update(l *config.Listener, pools map[string]*poolState) error
	// shutdown drains until ctx ends; close stops now.
	shutdown(ctx context.Context) error
	close() error
}

// errReplace says a listener's change cannot be applied in place.
var errReplace = errors.New("daemon: listener must be replaced")

// listenerState is a running listener.
type listenerState struct {
	cfg   config.Listener
	srv   server
	since time.Time
	done  chan struct{} // closed when the server's Serve returned
}

// env is what starting a listener needs from the daemon.
type env struct {
	// path resolves a file named in the configuration (relative to the
	// configuration file's directory).
	path    func(string) string
	ctx     context.Context
	log     *slog.Logger
	metrics *Metrics
	access  *accessLog
	// served, if not nil, is told of every listener a socket server is
	// given to Serve (tests look at its type).
	served func(listener string, ln net.Listener)
}

// startListener starts l on its address.
func startListener(e env, l *config.Listener, pools map[string]*poolState) (*listenerState, error) {
	ls := &listenerState{cfg: *l, since: time.Now(), done: make(chan struct{})}
	var err error
	switch l.Type {
	case config.TypeDNS:
		ls.srv, err = startDNS(e, l, pools, ls.done)
	case config.TypeTCP:
		ls.srv, err = startTCP(e, l, pools, ls.done)
	case config.TypeHTTP:
		ls.srv, err = startSwap(e, l, pools, ls.done, buildHTTP(e))
	case config.TypeRedirect:
		ls.srv, err = startSwap(e, l, pools, ls.done, buildRedirect(e))
	default:
		err = startOther(e, l, pools, ls)
	}
	if err != nil {
		return nil, err
	}
	return ls, nil
}

// pool returns the named pool or an error.
func pool(l *config.Listener, pools map[string]*poolState, name string) (*poolState, error) {
	ps := pools[name]
	if ps == nil {
		return nil, errNoPool(l.Name, name)
	}
	return ps, nil
}

// ---- dns ----

type dnsServer struct {
	srv      *dnslb.Server
	log      *slog.Logger
	cancel   context.CancelFunc // stops the updaters; nil before the first start
	updaters sync.WaitGroup
}

func dnsConfig(l *config.Listener, pools map[string]*poolState, log *slog.Logger) (dnslb.Config, error) {
	d := l.DNS
	cfg := dnslb.Config{UDPSockets: d.UDPSockets, MaxUDPSize: d.MaxUDPSize, TCPIdleTimeout: d.TCPIdleTimeout, MaxTCPConns: d.MaxTCPConns, Logger: log}
	for _, z := range d.Zones {
		cfg.Zones = append(cfg.Zones, dnslb.Zone{Origin: z.Origin, Records: z.Records})
	}
	for _, s := range d.Services {
		ps, err := pool(l, pools, s.Pool)
		if err != nil {
			return cfg, err
		}
		svc := dnslb.Service{Name: s.Name, Pool: ps.pool, Key: ps.cfg.Key, Count: s.Count, TTL: s.TTL, UpdatePort: uint16(s.UpdatePort)}
		if err := svc.Policy.UnmarshalText([]byte(s.Policy)); s.Policy != "" && err != nil {
			return cfg, err
		}
		if err := svc.Fallback.UnmarshalText([]byte(s.Fallback)); s.Fallback != "" && err != nil {
			return cfg, err
		}
		for _, zr := range s.Zones {
			p, err := config.ParsePrefix(zr.Prefix)
			if err != nil {
				return cfg, err
			}
			svc.Zones = append(svc.Zones, dnslb.ZoneRule{Prefix: p, Zone: zr.Zone})
		}
		cfg.Services = append(cfg.Services, svc)
	}
	if r := d.RRL; r != nil {
		cfg.RateLimit = dnslb.RateLimit{Rate: r.Rate, Burst: r.Burst, Slip: r.Slip, IPv4PrefixLen: r.IPv4PrefixLen, IPv6PrefixLen: r.IPv6PrefixLen, TableSize: r.TableSize}
	}
	for _, k := range d.UpdateKeys {
		cfg.UpdateKeys = append(cfg.UpdateKeys, dnslb.TSIGKey{Name: k.Name, Secret: k.Secret, Algorithm: string(k.Algorithm)})
	}
	return cfg, nil
}

func startDNS(e env, l *config.Listener, pools map[string]*poolState, done chan struct{}) (server, error) {
	log := e.log.With("listener", l.Name)
	cfg, err := dnsConfig(l, pools, log)
	if err != nil {
		return nil, err
	}
	ds := &dnsServer{log: log}
	updaters, err := dnsUpdaters(l, pools, log)
	if err != nil {
		return nil, err
	}
	if l.Addr != "" {
		srv, err := dnslb.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
		}
		udp, tcp, err := dnslb.Listen(e.ctx, l.Addr, cfg.UDPSockets)
		if err != nil {
			return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
		}
		ds.srv = srv
		go func() {
			defer close(done)
			if err := srv.Serve(context.Background(), udp, []net.Listener{tcp}); err != nil {
				log.Error("daemon: dns listener stopped", "err", err)
			}
		}()
	} else {
		close(done)
	}
	ds.runUpdaters(updaters)
	return ds, nil
}

// dnsUpdaters builds l's dynamic-DNS updaters.
func dnsUpdaters(l *config.Listener, pools map[string]*poolState, log *slog.Logger) ([]*dnslb.Updater, error) {
	var updaters []*dnslb.Updater
	for _, u := range l.DNS.Updaters {
		ps, err := pool(l, pools, u.Pool)
		if err != nil {
			return nil, err
		}
		typ := dns.TypeA
		if u.Type == "AAAA" {
			typ = dns.TypeAAAA
		}
		uc := dnslb.UpdaterConfig{
			Server: u.Server, Zone: u.Zone, Name: u.Name, Type: typ, TTL: u.TTL, Pool: ps.pool,
			Key: dnslb.TSIGKey{Name: u.Key.Name, Secret: u.Key.Secret, Algorithm: string(u.Key.Algorithm)},
			Net: u.Net, Timeout: u.Timeout, Interval: u.Interval, Logger: log,
		}
		if u.Fallback != "" {
			if err := uc.Fallback.UnmarshalText([]byte(u.Fallback)); err != nil {
				return nil, err
			}
		}
		up, err := dnslb.NewUpdater(uc)
		if err != nil {
			return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
		}
		updaters = append(updaters, up)
	}
	return updaters, nil
}

// runUpdaters stops the running updaters and starts these.
func (ds *dnsServer) runUpdaters(ups []*dnslb.Updater) {
	ds.stopUpdaters()
	ctx, cancel := context.WithCancel(context.Background())
	ds.cancel = cancel
	for _, up := range ups {
		ds.updaters.Add(1)
		go func() {
			defer ds.updaters.Done()
			_ = up.Run(ctx)
		}()
	}
}

func (ds *dnsServer) stopUpdaters() {
	if ds.cancel != nil {
		ds.cancel()
		ds.updaters.Wait()
	}
}

func (ds *dnsServer) update(l *config.Listener, pools map[string]*poolState) error {
	cfg, err := dnsConfig(l, pools, ds.log)
	if err != nil {
		return err
	}
	ups, err := dnsUpdaters(l, pools, ds.log)
	if err != nil {
		return err
	}
	if (ds.srv == nil) != (l.Addr == "") {
		return errReplace
	}
	if ds.srv != nil {
		if err := ds.srv.Update(cfg.Zones, cfg.Services); err != nil {
			return err
		}
	}
	ds.runUpdaters(ups)
	return nil
}

func (ds *dnsServer) shutdown(ctx context.Context) error {
	ds.stopUpdaters()
	if ds.srv == nil {
		return nil
	}
	return ds.srv.Shutdown(ctx)
}

func (ds *dnsServer) close() error {
	ds.stopUpdaters()
	if ds.srv == nil {
		return nil
	}
	return ds.srv.Close()
}

func (ds *dnsServer) collect(name string, ch chan<- prometheus.Metric) {
	if ds.srv == nil {
		return
	}
	st := ds.srv.Stats()
	ch <- prometheus.MustNewConstMetric(descDNSQueries, prometheus.CounterValue, float64(st.Queries), name)
	ch <- prometheus.MustNewConstMetric(descDNSResponses, prometheus.CounterValue, float64(st.Responses), name)
	ch <- prometheus.MustNewConstMetric(descDNSTruncated, prometheus.CounterValue, float64(st.Truncated), name)
	ch <- prometheus.MustNewConstMetric(descDNSRRL, prometheus.CounterValue, float64(st.Slipped), name, "slipped")
	ch <- prometheus.MustNewConstMetric(descDNSRRL, prometheus.CounterValue, float64(st.Dropped), name, "dropped")
}

// ---- tcp ----

type tcpServer struct {
	srv  *tcpproxy.Server
	log  *slog.Logger
	name string
}

func tcpConfig(l *config.Listener, pools map[string]*poolState, log *slog.Logger) (tcpproxy.Config, error) {
	t := l.TCP
	ps, err := pool(l, pools, t.Pool)
	if err != nil {
		return tcpproxy.Config{}, err
	}
	cfg := tcpproxy.Config{
		Pool: ps.pool, Key: ps.cfg.Key, DialTimeout: t.ConnectTimeout, DialAttempts: t.ConnectAttempts,
		IdleTimeout: t.IdleTimeout, MaxConnsPerBackend: t.MaxConns, AcceptProxyProtocol: t.ProxyProtocol.Accept, Logger: log,
	}
	if t.ProxyProtocol.Send != "" {
		if err := cfg.ProxyProtocol.UnmarshalText([]byte(t.ProxyProtocol.Send)); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func startTCP(e env, l *config.Listener, pools map[string]*poolState, done chan struct{}) (server, error) {
	log := e.log.With("listener", l.Name)
	cfg, err := tcpConfig(l, pools, log)
	if err != nil {
		return nil, err
	}
	srv, err := tcpproxy.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	ln, err := listen(e.ctx, l)
	if err != nil {
		return nil, err
	}
	if e.served != nil {
		e.served(l.Name, ln)
	}
	go func() {
		defer close(done)
		if err := srv.Serve(context.Background(), ln); err != nil {
			log.Error("daemon: tcp listener stopped", "err", err)
		}
	}()
	return &tcpServer{srv: srv, log: log, name: l.Name}, nil
}

func (ts *tcpServer) update(l *config.Listener, pools map[string]*poolState) error {
	cfg, err := tcpConfig(l, pools, ts.log)
	if err != nil {
		return err
	}
	return ts.srv.Update(cfg)
}

func (ts *tcpServer) shutdown(ctx context.Context) error { return ts.srv.Shutdown(ctx) }
func (ts *tcpServer) close() error                       { return ts.srv.Close() }

// listen opens l's TCP socket.
func listen(ctx context.Context, l *config.Listener) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	return ln, nil
}

var (
	descDNSQueries   = prometheusDesc("lbkit_dns_queries_total", "DNS queries received.", "listener")
	descDNSResponses = prometheusDesc("lbkit_dns_responses_total", "DNS responses sent.", "listener")
	descDNSTruncated = prometheusDesc("lbkit_dns_truncated_total", "DNS responses truncated (the client retries over TCP).", "listener")
	descDNSRRL       = prometheusDesc("lbkit_dns_rrl_total", "Responses limited by response-rate limiting, by action (slipped: sent truncated; dropped).", "listener", "action")
)

func prometheusDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}
