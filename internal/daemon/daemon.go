package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/health"
)

// Options configures a [Daemon].
type Options struct {
	// ConfigFile is the file Reload reads. Empty means the daemon runs
	// from the configuration given to Start alone and cannot reload.
	ConfigFile string
	// AdminAddr, when set, replaces the configuration's admin address
	// (the -admin flag). "off" disables the admin endpoint.
	AdminAddr string
	// Logger receives the daemon's and every component's logs. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Resolver resolves members named by host. Nil means
	// net.DefaultResolver.
	Resolver *net.Resolver
}

// Daemon runs pools and listeners from a configuration and applies new
// configurations as diffs. All methods are safe for concurrent use; Apply
// calls are serialized.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	metrics *Metrics
	started time.Time

	mu        sync.Mutex // serializes Apply and guards the fields below
	cfg       *config.Config
	pools     map[string]*poolState
	listeners map[string]*listenerState
	access    *accessLog
	admin     *http.Server
	adminLn   net.Listener
	adminDone chan struct{}
	rev       uint64
	reloads   []ReloadStatus
	draining  sync.WaitGroup // listeners shutting down after a reload
	closed    bool

	cluster atomic.Pointer[clusterNode] // set by StartCluster (see cluster.go)

	// served, if not nil, is told of every listener a socket server is
	// given to Serve. Tests set it before Start.
	served func(listener string, ln net.Listener)
}

// maxReloads is how many reload outcomes /status keeps.
const maxReloads = 20

// New returns a daemon that serves nothing until Start.
func New(opts Options) *Daemon {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	d := &Daemon{
		opts: opts, log: log, started: time.Now(),
		pools: make(map[string]*poolState), listeners: make(map[string]*listenerState),
	}
	d.metrics = newMetrics(d.poolEntries)
	d.metrics.Registry().MustRegister(listenerCollector{d})
	return d
}

// Start applies cfg, the first configuration, and starts the admin
// endpoint. If any part fails to start, everything started is stopped and
// the error returned.
func (d *Daemon) Start(cfg *config.Config) error {
	if err := d.Apply(cfg, "start"); err != nil {
		d.Close()
		return err
	}
	return nil
}

// Reload reads the configuration file again and applies it. A file that
// does not load, or a configuration that fails to apply, is rejected: the
// running configuration keeps serving, and the error is returned, logged,
// and shown on /status.
func (d *Daemon) Reload(trigger string) error {
	if d.opts.ConfigFile == "" {
		return errors.New("daemon: no configuration file to reload")
	}
	cfg, err := config.Load(d.opts.ConfigFile)
	if err != nil {
		d.recordReload(trigger, err)
		return err
	}
	return d.Apply(cfg, trigger)
}

// Apply makes cfg the running configuration, as a diff from the current
// one: pools and listeners are matched by name; unchanged ones are left
// alone; a changed pool keeps its members' state; a changed listener keeps
// its socket and connections unless its type or address changed, when a
// new one starts first and the old one drains. Removed listeners drain in
// the background for up to the shutdown timeout. On error nothing of cfg
// is applied (listeners and pools started for it are stopped).
func (d *Daemon) Apply(cfg *config.Config, trigger string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.applyLocked(cfg)
	d.recordReloadLocked(trigger, err)
	return err
}

func (d *Daemon) applyLocked(cfg *config.Config) (err error) {
	if d.closed {
		return errors.New("daemon: closed")
	}
	ctx := context.Background()
	ch := config.Diff(d.cfg, cfg)

	// Phase 1: everything that can fail, without touching what serves.
	newPools := make(map[string]*poolState)
	var commits []func() error
	defer func() {
		if err != nil {
			for _, ps := range newPools {
				ps.close()
			}
		}
	}()
	for _, name := range ch.PoolsAdded {
		p := findPool(cfg, name)
		ps, err := newPool(ctx, p, d.log, d.opts.Resolver)
		if err != nil {
			return err
		}
		newPools[name] = ps
	}
	for _, pc := range ch.PoolsChanged {
		ps := d.pools[pc.Name]
		commit, err := ps.prepare(ctx, findPool(cfg, pc.Name), pc, d.log, d.opts.Resolver)
		if err != nil {
			return err
		}
		commits = append(commits, commit)
	}
	pools := make(map[string]*poolState, len(cfg.Pools))
	for name, ps := range d.pools {
		pools[name] = ps
	}
	for name, ps := range newPools {
		pools[name] = ps
	}
	var access *accessLog
	if d.cfg == nil || ch.AccessLog {
		if access, err = d.openAccess(cfg); err != nil {
			return err
		}
	}
	e := env{path: cfg.Path, ctx: ctx, log: d.log, metrics: d.metrics, access: access, served: d.served}
	if access == nil {
		e.access = d.access
	}

	// Phase 2: listeners that are new or replaced start on their sockets
	// (a bind error stops the reload here, with nothing old touched).
	started := make(map[string]*listenerState)
	defer func() {
		if err != nil {
			for _, ls := range started {
				ls.srv.close()
			}
			if access != nil {
				access.Close()
			}
		}
	}()
	replace := make(map[string]bool)
	for _, lc := range ch.ListenersChanged {
		if lc.TypeChanged || lc.AddrChanged {
			replace[lc.Name] = true
		}
	}
	for _, l := range cfg.Listeners {
		if _, exists := d.listeners[l.Name]; exists && !replace[l.Name] {
			continue
		}
		ls, err := startListener(e, &l, pools)
		if err != nil {
			return err
		}
		started[l.Name] = ls
	}

	// Phase 3: commit. Pools first, so listeners updated in place find
	// their pools current.
	for _, c := range commits {
		if err := c(); err != nil {
			d.log.Error("daemon: pool change applied in part", "err", err)
		}
	}
	for name, ps := range newPools {
		d.pools[name] = ps
	}
	newPools = nil
	for _, lc := range ch.ListenersChanged {
		if replace[lc.Name] {
			continue
		}
		ls := d.listeners[lc.Name]
		l := findListener(cfg, lc.Name)
		switch err := ls.srv.update(l, d.pools); {
		case errors.Is(err, errReplace):
			// Same address, new server: the old one stops accepting
			// first. Rare (see each server's update).
			d.drainLocked(cfg, ls)
			nls, err := startListener(e, l, d.pools)
			if err != nil {
				d.log.Error("daemon: listener could not be restarted", "listener", lc.Name, "err", err)
				delete(d.listeners, lc.Name)
				continue
			}
			d.listeners[lc.Name] = nls
		case err != nil:
			d.log.Error("daemon: listener change not applied", "listener", lc.Name, "err", err)
		default:
			ls.cfg, ls.since = *l, time.Now()
		}
	}
	// Listeners hold their pools' keys: a pool whose key changed updates
	// the listeners that serve from it and are not otherwise changed.
	rekeyed := make(map[string]bool)
	for _, pc := range ch.PoolsChanged {
		if pc.Key {
			rekeyed[pc.Name] = true
		}
	}
	if len(rekeyed) > 0 {
		changed := make(map[string]bool)
		for _, lc := range ch.ListenersChanged {
			changed[lc.Name] = true
		}
		for name, ls := range d.listeners {
			if changed[name] || started[name] != nil {
				continue
			}
			for _, p := range ls.cfg.PoolNames() {
				if rekeyed[p] {
					l := findListener(cfg, name)
					if err := ls.srv.update(l, d.pools); err != nil {
						d.log.Error("daemon: listener did not take the pool's new key", "listener", name, "err", err)
					}
					break
				}
			}
		}
	}
	for name, ls := range started {
		if old := d.listeners[name]; old != nil {
			d.drainLocked(cfg, old)
		}
		d.listeners[name] = ls
	}
	started = nil
	for _, name := range ch.ListenersRemoved {
		if ls := d.listeners[name]; ls != nil {
			d.drainLocked(cfg, ls)
			delete(d.listeners, name)
		}
	}
	for _, name := range ch.PoolsRemoved {
		if ps := d.pools[name]; ps != nil {
			ps.close()
			delete(d.pools, name)
		}
	}
	if access != nil {
		if d.access != nil {
			d.access.Close()
		}
		d.access = access
	}
	if d.cfg == nil || ch.Admin {
		if err := d.restartAdminLocked(cfg); err != nil {
			d.log.Error("daemon: admin endpoint", "err", err)
		}
	}
	d.cfg = cfg
	return nil
}

// drainLocked shuts ls down in the background, for up to the shutdown
// timeout.
func (d *Daemon) drainLocked(cfg *config.Config, ls *listenerState) {
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = config.DefaultShutdownTimeout
	}
	d.draining.Add(1)
	go func() {
		defer d.draining.Done()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := ls.srv.shutdown(ctx); err != nil {
			ls.srv.close()
		}
		<-ls.done
	}()
}

func (d *Daemon) openAccess(cfg *config.Config) (*accessLog, error) {
	if cfg.AccessLog.Path == "" {
		return nil, nil
	}
	path := cfg.AccessLog.Path
	if path != "stdout" && path != "stderr" && !filepath.IsAbs(path) && d.opts.ConfigFile != "" {
		path = filepath.Join(filepath.Dir(d.opts.ConfigFile), path)
	}
	return openAccessLog(path, cfg.AccessLog.Format == config.LogCombined)
}

// ReopenLogs reopens the access log file (SIGUSR1).
func (d *Daemon) ReopenLogs() error {
	d.mu.Lock()
	a := d.access
	d.mu.Unlock()
	if a == nil {
		return nil
	}
	return a.Reopen()
}

func (d *Daemon) restartAdminLocked(cfg *config.Config) error {
	if d.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.admin.Shutdown(ctx)
		cancel()
		<-d.adminDone
		d.admin, d.adminLn = nil, nil
	}
	addr := cfg.Admin.Addr
	if d.opts.AdminAddr != "" {
		addr = d.opts.AdminAddr
	}
	if addr == "" {
		addr = config.DefaultAdminAddr
	}
	if addr == "off" {
		return nil
	}
	if cfg.Admin.Token == "" {
		if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().IsLoopback() {
			return fmt.Errorf("daemon: admin address %s is not loopback and no token is set: refusing to serve it", addr)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("daemon: admin: %w", err)
	}
	srv := &http.Server{Handler: AdminHandler(d, cfg.Admin.Token), ReadHeaderTimeout: 10 * time.Second}
	d.admin, d.adminLn, d.adminDone = srv, ln, make(chan struct{})
	done := d.adminDone
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	d.log.Info("daemon: admin endpoint", "addr", ln.Addr().String())
	return nil
}

// AdminAddr returns the admin endpoint's address, or "" when it is off.
func (d *Daemon) AdminAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.adminLn == nil {
		return ""
	}
	return d.adminLn.Addr().String()
}

func (d *Daemon) recordReload(trigger string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recordReloadLocked(trigger, err)
}

func (d *Daemon) recordReloadLocked(trigger string, err error) {
	now := time.Now()
	if err == nil {
		d.rev++
	}
	r := ReloadStatus{Time: now, OK: err == nil, Revision: d.rev, Trigger: trigger}
	if err != nil {
		r.Error = err.Error()
		d.log.Error("daemon: configuration rejected; the running one keeps serving", "trigger", trigger, "err", err)
	} else {
		d.log.Info("daemon: configuration applied", "trigger", trigger, "revision", d.rev)
	}
	d.reloads = append(d.reloads, r)
	if len(d.reloads) > maxReloads {
		d.reloads = d.reloads[len(d.reloads)-maxReloads:]
	}
	d.metrics.reloaded(err == nil, d.rev, now)
}

// Status returns the state of every pool and listener.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	st := Status{Revision: d.rev, ConfigFile: d.opts.ConfigFile, Started: d.started, Reloads: slices.Clone(d.reloads)}
	if n := len(d.reloads); n > 0 {
		last := d.reloads[n-1]
		st.LastReload, st.LastReloadOK, st.LastReloadError = last.Time, last.OK, last.Error
	}
	type poolView struct {
		name, policy, key string
		ps                *poolState
		checker           *health.Checker
		sources           []SourceStatus
	}
	pools := make([]poolView, 0, len(d.pools))
	for _, ps := range d.pools {
		pools = append(pools, poolView{ps.cfg.Name, string(policyName(&ps.cfg)), ps.cfg.Key.String(), ps, ps.checker, ps.discoveryStatus()})
	}
	for _, ls := range d.listeners {
		st.Listeners = append(st.Listeners, ListenerStatus{Name: ls.cfg.Name, Type: string(ls.cfg.Type), Addr: listenerAddr(&ls.cfg), Pools: ls.cfg.PoolNames(), Since: ls.since})
	}
	d.mu.Unlock()
	for _, v := range pools {
		ps := poolStatus(v.name, v.policy, v.key, v.ps.pool, v.checker, v.ps.events)
		ps.Discovery = v.sources
		st.Pools = append(st.Pools, ps)
	}
	if n := d.cluster.Load(); n != nil {
		st.Cluster = n.status()
	}
	sortStatus(&st)
	return st
}

func policyName(p *config.Pool) config.Policy {
	if p.Policy == "" {
		return config.PolicyRoundRobin
	}
	return p.Policy
}

func listenerAddr(l *config.Listener) string {
	switch {
	case l.IPLB != nil:
		return net.JoinHostPort(l.IPLB.VIP, fmt.Sprint(l.IPLB.Port))
	case l.L2LB != nil:
		return l.L2LB.Interface
	}
	return l.Addr
}

// Pool returns the running pool with that name, or nil.
func (d *Daemon) Pool(name string) *balancer.Pool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ps := d.pools[name]; ps != nil {
		return ps.pool
	}
	return nil
}

// Override returns the operator override on a member.
func (d *Daemon) Override(pool string, member netip.AddrPort) (balancer.Override, error) {
	p := d.Pool(pool)
	if p == nil {
		return balancer.Override{}, fmt.Errorf("%w: %q", ErrNoPool, pool)
	}
	ep := p.Endpoint(member)
	if ep == nil {
		return balancer.Override{}, fmt.Errorf("%w: %s in pool %q", ErrNoMember, member, pool)
	}
	return ep.Override(), nil
}

// SetOverride drains or weighs a member, until the configuration changes
// that member or the operator clears it.
func (d *Daemon) SetOverride(pool string, member netip.AddrPort, o balancer.Override) error {
	p := d.Pool(pool)
	if p == nil {
		return fmt.Errorf("%w: %q", ErrNoPool, pool)
	}
	if !p.SetOverride(member, o) {
		return fmt.Errorf("%w: %s in pool %q", ErrNoMember, member, pool)
	}
	return nil
}

// Metrics returns the daemon's metrics.
func (d *Daemon) Metrics() *Metrics { return d.metrics }

func (d *Daemon) poolEntries() []poolEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]poolEntry, 0, len(d.pools))
	for name, ps := range d.pools {
		out = append(out, poolEntry{name, ps.pool, ps.events})
	}
	slices.SortFunc(out, func(a, b poolEntry) int { return cmpString(a.name, b.name) })
	return out
}

// WatchFile reloads the configuration when its file changes (written,
// replaced by a rename, as editors and config management do), until ctx
// ends. Changes within 200 ms are applied once.
func (d *Daemon) WatchFile(ctx context.Context) error {
	if d.opts.ConfigFile == "" {
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("daemon: watch: %w", err)
	}
	defer w.Close()
	file, err := filepath.Abs(d.opts.ConfigFile)
	if err != nil {
		return err
	}
	if err := w.Add(filepath.Dir(file)); err != nil {
		return fmt.Errorf("daemon: watch: %w", err)
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == file && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				timer = time.After(200 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			d.log.Warn("daemon: watch", "err", err)
		case <-timer:
			timer = nil
			if _, err := os.Stat(file); err == nil {
				_ = d.Reload("file")
			}
		}
	}
}

// Shutdown stops accepting on every listener and waits, until ctx ends,
// for work in flight to finish; then it removes what is left (kernel
// state included), stops the health checkers and the admin endpoint.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	listeners := make([]*listenerState, 0, len(d.listeners))
	for _, ls := range d.listeners {
		listeners = append(listeners, ls)
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(listeners))
	for i, ls := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ls.srv.shutdown(ctx); err != nil {
				errs[i] = err
				ls.srv.close()
			}
			<-ls.done
		}()
	}
	wg.Wait()
	d.draining.Wait()
	d.finish()
	return errors.Join(errs...)
}

// Close stops everything now.
func (d *Daemon) Close() error {
	d.mu.Lock()
	d.closed = true
	listeners := make([]*listenerState, 0, len(d.listeners))
	for _, ls := range d.listeners {
		listeners = append(listeners, ls)
	}
	d.mu.Unlock()
	for _, ls := range listeners {
		ls.srv.close()
		<-ls.done
	}
	d.draining.Wait()
	d.finish()
	return nil
}

func (d *Daemon) finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, ps := range d.pools {
		ps.close()
		delete(d.pools, name)
	}
	clear(d.listeners)
	if d.admin != nil {
		d.admin.Close()
		<-d.adminDone
		d.admin, d.adminLn = nil, nil
	}
	if d.access != nil {
		d.access.Close()
		d.access = nil
	}
}

func findPool(cfg *config.Config, name string) *config.Pool {
	for i := range cfg.Pools {
		if cfg.Pools[i].Name == name {
			return &cfg.Pools[i]
		}
	}
	return nil
}

func findListener(cfg *config.Config, name string) *config.Listener {
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == name {
			return &cfg.Listeners[i]
		}
	}
	return nil
}

// listenerCollector exports the counters that listeners keep themselves
// (DNS queries, kernel data-plane packets), read at scrape time.
type listenerCollector struct{ d *Daemon }

func (c listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDNSQueries
	ch <- descDNSResponses
	ch <- descDNSTruncated
	ch <- descDNSRRL
	for _, d := range kernelDescs {
		ch <- d
	}
}

func (c listenerCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	type named struct {
		name string
		s    server
	}
	var ls []named
	for name, l := range c.d.listeners {
		ls = append(ls, named{name, l.srv})
	}
	c.d.mu.Unlock()
	for _, l := range ls {
		if col, ok := l.s.(interface {
			collect(string, chan<- prometheus.Metric)
		}); ok {
			col.collect(l.name, ch)
		}
	}
}
