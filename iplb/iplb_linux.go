package iplb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftConn is the part of *nftables.Conn the balancer uses: queueing
// operations into a batch, sending it (Flush), and reading counters.
// Tests substitute a recorder that renders the batch instead.
type nftConn interface {
	AddTable(*nftables.Table) *nftables.Table
	DelTable(*nftables.Table)
	AddChain(*nftables.Chain) *nftables.Chain
	DelChain(*nftables.Chain)
	FlushChain(*nftables.Chain)
	AddRule(*nftables.Rule) *nftables.Rule
	AddObj(nftables.Obj) nftables.Obj
	DeleteObject(nftables.Obj)
	AddSet(*nftables.Set, []nftables.SetElement) error
	DelSet(*nftables.Set)
	FlushSet(*nftables.Set)
	SetAddElements(*nftables.Set, []nftables.SetElement) error
	SetDeleteElements(*nftables.Set, []nftables.SetElement) error
	Flush() error
	GetObjects(*nftables.Table) ([]nftables.Obj, error)
	CloseLasting() error
}

var _ nftConn = (*nftables.Conn)(nil)

// elemChunk bounds the elements per netlink message: a message's element
// list is one attribute, whose length field has 16 bits.
const elemChunk = 256

// sockBuf is the socket buffer forced on the netlink socket, so a batch
// that fills a 65521-slot map (about 2 MB) and its acknowledgements fit.
const sockBuf = 16 << 20

// Balancer programs virtual services into one nftables table and keeps
// each service's slot map in step with its pool.
//
// A Balancer is not a listener server: the kernel forwards the traffic.
// [Balancer.Serve] installs the table and runs the control loop that
// follows the pools; it returns when its context ends or
// [Balancer.Shutdown] or [Balancer.Close] is called, and then removes the
// table. All methods are safe for concurrent use. Changes are
// serialized: each is one nftables batch sent under the balancer's mutex,
// and blocks for the few milliseconds the kernel takes to commit it.
type Balancer struct {
	cfg   Config
	log   *slog.Logger
	conn  nftConn
	table *nftables.Table
	pre   *nftables.Chain
	post  *nftables.Chain

	mu       sync.Mutex
	services map[string]*service
	state    runState
	started  chan struct{} // closed when serving starts or the balancer stops
	stop     chan struct{} // closed by Shutdown and Close
	done     chan struct{} // closed when Serve has removed the table
	wg       sync.WaitGroup
	closeErr error // from deleting the table; read after done

	// Shutdown's drain: drainCtx is Shutdown's context (nil: Close or
	// Serve's context stopped the balancer, no drain); kill, closed by
	// Close, cuts a drain short. countFlows counts the services' open
	// conntrack flows; nil (tests) drains without waiting.
	drainCtx   context.Context
	kill       chan struct{}
	countFlows func(map[vipKey]bool) (int, error)
	closeCount func()
}

// runState is where a Balancer is in its life.
type runState uint8

const (
	idle    runState = iota // New returned; Serve not called
	serving                 // the table is in the kernel
	stopped                 // Shutdown or Close was called, or Serve failed
)

// service is one virtual service and the kernel state that mirrors it,
// updated only after a batch commits.
type service struct {
	svc  Service
	pool *balancer.Pool
	set  *nftables.Set // slot → backend address
	bset *nftables.Set // backend address → counter chain
	stop chan struct{}

	installed bool                      // its maps are in the kernel
	counter   bool                      // its counter is in the kernel
	size      int                       // modulus in the kernel rule
	next      int                       // modulus of the batch being built
	table     *maglev.Table             // slots in the kernel map; nil: empty
	ids       map[uint64]netip.AddrPort // table id → backend
	chains    map[netip.AddrPort]bool   // backend chains in the kernel
	version   uint64                    // snapshot version the kernel reflects
	applied   bool
	err       error
}

// New checks cfg and its services and opens a netlink socket to the
// namespace's nftables; it changes nothing in the kernel until
// [Balancer.Serve]. It needs CAP_NET_ADMIN.
func New(cfg Config) (*Balancer, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(forceBuffers)}
	if cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("iplb: netlink: %w", err)
	}
	b, err := newBalancer(cfg, c)
	if err != nil {
		c.CloseLasting()
		return nil, err
	}
	if b.countFlows, b.closeCount, err = conntrackCounter(cfg.NetNS); err != nil {
		c.CloseLasting()
		return nil, err
	}
	return b, nil
}

// forceBuffers raises the netlink socket's buffers past the system limits
// (root may), for large batches.
func forceBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf),
		)
	}); err != nil {
		return err
	}
	return serr
}

// check validates the balancer-wide settings.
func (cfg *Config) check() error {
	if cfg.RetryInterval < 0 {
		return errors.New("iplb: RetryInterval must not be negative")
	}
	_, err := checkServices(cfg.Services)
	return err
}

// checkServices validates svcs as one set (names and VIPs distinct) and
// returns them with defaults filled in.
func checkServices(svcs []Service) ([]Service, error) {
	out := make([]Service, len(svcs))
	for i, svc := range svcs {
		if err := svc.validate(); err != nil {
			return nil, err
		}
		for _, o := range out[:i] {
			if err := conflict(&o, &svc); err != nil {
				return nil, err
			}
		}
		out[i] = svc
	}
	return out, nil
}

// conflict returns an error wrapping [ErrExists] if a and b have the same
// name, or the same VIP and protocol.
func conflict(a, b *Service) error {
	if a.Name == b.Name || (a.VIP == b.VIP && a.Proto == b.Proto) {
		return fmt.Errorf("%w: %s and %s on %v/%v", ErrExists, a.Name, b.Name, b.VIP, b.Proto)
	}
	return nil
}

func newBalancer(cfg Config, c nftConn) (*Balancer, error) {
	if cfg.Table == "" {
		cfg.Table = "lbkit"
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Second
	}
	svcs, err := checkServices(cfg.Services)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	t := &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	b := &Balancer{
		cfg: cfg, log: log.With("table", cfg.Table), conn: c, table: t,
		pre: &nftables.Chain{
			Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
		},
		post: &nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		},
		services: make(map[string]*service),
		started:  make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		kill:     make(chan struct{}),
	}
	for _, svc := range svcs {
		b.services[svc.Name] = b.newService(svc)
	}
	return b, nil
}

func (b *Balancer) newService(svc Service) *service {
	return &service{
		svc:    svc,
		pool:   svc.Pool,
		set:    slotMap(b.table, &svc),
		bset:   backendMap(b.table, &svc),
		stop:   make(chan struct{}),
		ids:    map[uint64]netip.AddrPort{},
		chains: map[netip.AddrPort]bool{},
	}
}

// Serve installs the balancer's table with its services in one atomic
// batch, replacing a table of the same name left by an earlier run, and
// then follows the services' pools, applying each new snapshot within
// milliseconds (unless Config.Manual), until ctx ends or Shutdown or
// Close is called. It then deletes the table and returns nil. Ending ctx
// means the same as Close.
//
// Serve returns an error if the kernel refuses the table, and
// [ErrServerClosed] if the balancer was already served or stopped.
func (b *Balancer) Serve(ctx context.Context) error {
	b.mu.Lock()
	if b.state != idle {
		b.mu.Unlock()
		return ErrServerClosed
	}
	if err := b.installLocked(); err != nil {
		b.state = stopped
		close(b.started)
		close(b.done)
		b.mu.Unlock()
		b.conn.CloseLasting()
		b.closeCounter()
		return err
	}
	b.state = serving
	close(b.started)
	if !b.cfg.Manual {
		for _, s := range b.services {
			b.startWatch(s)
		}
	}
	n := len(b.services)
	b.mu.Unlock()
	b.log.Info("iplb: serving", "services", n)

	select {
	case <-ctx.Done():
	case <-b.stop:
	}
	b.mu.Lock()
	b.state = stopped
	for _, s := range b.services {
		close(s.stop)
	}
	dctx := b.drainCtx
	b.mu.Unlock()
	b.wg.Wait()
	if dctx != nil && ctx.Err() == nil {
		b.drain(dctx, ctx, b.kill)
	}
	b.conn.DelTable(b.table)
	err := b.conn.Flush()
	if err != nil {
		err = fmt.Errorf("iplb: delete table inet %s: %w", b.cfg.Table, err)
		b.log.Error("iplb: stopping", "err", err)
	}
	b.closeErr = errors.Join(err, b.conn.CloseLasting())
	b.closeCounter()
	close(b.done)
	return nil
}

// closeCounter closes the conntrack handle, if any.
func (b *Balancer) closeCounter() {
	if b.closeCount != nil {
		b.closeCount()
	}
}

// installLocked sends the batch that creates the table, its chains and
// every configured service.
func (b *Balancer) installLocked() error {
	plans, err := b.plan(b.sortedServices())
	if err != nil {
		return err
	}
	c := b.conn
	// Add first so that the delete cannot fail on a missing table: the
	// batch replaces a stale table or creates a fresh one, atomically.
	c.AddTable(b.table)
	c.DelTable(b.table)
	c.AddTable(b.table)
	c.AddChain(b.pre)
	c.AddChain(b.post)
	var commits []func()
	for i, s := range b.sortedServices() {
		commit, err := b.queueApply(s, plans[i].snap, plans[i].plan, true)
		if err != nil {
			return err
		}
		commits = append(commits, commit)
	}
	b.writeHooks()
	if err := c.Flush(); err != nil {
		return fmt.Errorf("iplb: create table inet %s: %w", b.cfg.Table, err)
	}
	for _, commit := range commits {
		commit()
	}
	return nil
}

// startWatch starts the goroutine that follows s's pool. b.mu must be
// held and the balancer serving.
func (b *Balancer) startWatch(s *service) {
	b.wg.Add(1)
	go b.watch(s)
}

// Shutdown drains the balancer: it stops following the pools and
// steering new flows (the prerouting chain is emptied, so a new
// connection to a VIP reaches the balancer itself), keeps the table so
// that conntrack goes on translating established flows, and waits until none of the
// services' flows is open (TCP past FIN, no UDP entry left), polling
// conntrack every 100 ms. Serve then deletes the table and returns, and
// so does Shutdown. If ctx ends first, Serve deletes the table at once
// (the flows left are reset, as by Close) and Shutdown returns ctx.Err().
// Before Serve, Shutdown only marks the balancer stopped. It is safe to
// call more than once; Close cuts a drain short.
func (b *Balancer) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	if b.drainCtx == nil {
		b.drainCtx = ctx
	}
	b.mu.Unlock()
	if !b.halt() {
		return nil
	}
	select {
	case <-b.done:
		return b.closeErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the balancer now: Serve deletes the table at once, and
// Close waits for it. Without the table the kernel no longer translates
// the services' established flows: their next packets reach the balancer
// itself, which resets them (Shutdown drains them first). It is safe to
// call more than once, and before, during or after Serve, and cuts a
// Shutdown's drain short.
func (b *Balancer) Close() error {
	b.mu.Lock()
	select {
	case <-b.kill:
	default:
		close(b.kill)
	}
	b.mu.Unlock()
	if b.halt() {
		<-b.done
		return b.closeErr
	}
	return nil
}

// halt moves the balancer to stopped and reports whether Serve is
// running (or started) and will close done.
func (b *Balancer) halt() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case idle:
		b.state = stopped
		close(b.started)
		close(b.done)
		b.conn.CloseLasting()
		b.closeCounter()
		return false
	default:
		select {
		case <-b.stop:
		default:
			close(b.stop)
		}
		return true
	}
}

// AddService adds svc. While serving it installs the service in the
// kernel before returning, in one batch, and follows its pool; before
// Serve it joins the services Serve installs. The error is [ErrExists]
// (wrapped) for a duplicate name or VIP, or says why the kernel refused
// the batch.
func (b *Balancer) AddService(svc Service) error {
	return b.change(func(cur map[string]Service) error {
		if _, ok := cur[svc.Name]; ok {
			return fmt.Errorf("%w: %s", ErrExists, svc.Name)
		}
		cur[svc.Name] = svc
		return nil
	})
}

// UpdateService replaces the service named svc.Name by svc (another VIP,
// protocol, mode, key, table size or pool) in one batch. Flows already
// established keep their backend: conntrack carries them whatever the
// rules say; new flows follow svc. The service's counters carry on. It
// returns [ErrNotFound] (wrapped) for an unknown name.
func (b *Balancer) UpdateService(svc Service) error {
	return b.change(func(cur map[string]Service) error {
		if _, ok := cur[svc.Name]; !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, svc.Name)
		}
		cur[svc.Name] = svc
		return nil
	})
}

// RemoveService deletes the service's rules, maps, chains and counters in
// one batch. Established flows keep their translation in conntrack until
// they end. It returns [ErrNotFound] (wrapped) for an unknown name.
func (b *Balancer) RemoveService(name string) error {
	return b.change(func(cur map[string]Service) error {
		if _, ok := cur[name]; !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		delete(cur, name)
		return nil
	})
}

// SetServices makes svcs the balancer's services in one atomic batch:
// services whose name is new are added, those missing are removed, and
// those whose configuration changed are updated, as by AddService,
// RemoveService and UpdateService together. A packet meets the old set or
// the new one, never a mix; flows of services that stay are untouched.
func (b *Balancer) SetServices(svcs []Service) error {
	return b.change(func(cur map[string]Service) error {
		clear(cur)
		for _, svc := range svcs {
			if _, ok := cur[svc.Name]; ok {
				return fmt.Errorf("%w: %s listed twice", ErrExists, svc.Name)
			}
			cur[svc.Name] = svc
		}
		return nil
	})
}

// Services returns the configured services, in name order, with defaults
// filled in.
func (b *Balancer) Services() []Service {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Service, 0, len(b.services))
	for _, s := range b.sortedServices() {
		out = append(out, s.svc)
	}
	return out
}

// change applies edit to the set of configured services and brings the
// kernel to the result in one batch.
func (b *Balancer) change(edit func(map[string]Service) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stopped {
		return ErrServerClosed
	}
	cur := make(map[string]Service, len(b.services))
	for name, s := range b.services {
		cur[name] = s.svc
	}
	if err := edit(cur); err != nil {
		return err
	}
	list := slices.SortedFunc(maps.Values(cur), func(x, y Service) int { return cmp.Compare(x.Name, y.Name) })
	list, err := checkServices(list)
	if err != nil {
		return err
	}
	next := make(map[string]*service, len(list))
	var added, updated []*service
	for _, svc := range list {
		old := b.services[svc.Name]
		switch {
		case old == nil:
			s := b.newService(svc)
			next[svc.Name] = s
			added = append(added, s)
		case old.svc == svc:
			next[svc.Name] = old
		default:
			s := b.newService(svc)
			s.installed, s.counter, s.size, s.table, s.ids, s.chains = old.installed, old.counter, old.size, old.table, old.ids, old.chains
			next[svc.Name] = s
			updated = append(updated, s)
		}
	}
	var removed []*service
	for name, s := range b.services {
		if next[name] != s {
			removed = append(removed, s)
		}
	}
	if b.state == idle {
		b.services = next
		return nil
	}
	if len(added)+len(updated)+len(removed) == 0 {
		return nil
	}
	plans, err := b.plan(slices.Concat(added, updated))
	if err != nil {
		return err
	}
	prev := b.services
	b.services = next
	commits, err := b.queueChange(prev, added, updated, plans)
	if err == nil {
		err = b.conn.Flush()
	}
	if err != nil {
		b.services = prev
		for _, s := range prev {
			s.next = s.size
		}
		return fmt.Errorf("iplb: change services: %w", err)
	}
	for _, commit := range commits {
		commit()
	}
	for _, s := range removed {
		close(s.stop)
	}
	if !b.cfg.Manual {
		for _, s := range append(added, updated...) {
			b.startWatch(s)
		}
	}
	b.log.Info("iplb: services changed", "added", len(added), "updated", len(updated), "removed", len(removed)-len(updated))
	return nil
}

// queueChange queues the kernel side of replacing prev by b.services,
// hooks included: added services are created and updated ones rewritten
// in full before the hooks name them; the objects of removed services go
// after the hooks stopped naming them. An updated service whose address
// family changed gets new maps of the same names and new backend chains,
// once the hooks no longer name the old ones. It returns what to commit
// once the batch succeeds.
func (b *Balancer) queueChange(prev map[string]*service, added, updated []*service, plans []planned) ([]func(), error) {
	var removed []*service
	for _, name := range slices.Sorted(maps.Keys(prev)) {
		old, s := prev[name], b.services[name]
		switch {
		case s == nil:
			removed = append(removed, old)
		case s != old && old.svc.VIP.Addr().Is4() != s.svc.VIP.Addr().Is4():
			b.conn.FlushChain(b.pre)
			b.conn.FlushChain(b.post)
			b.delObjects(old, false)
			s.installed, s.size, s.table = false, 0, nil
			s.ids, s.chains = map[uint64]netip.AddrPort{}, map[netip.AddrPort]bool{}
		}
	}
	var commits []func()
	for i, s := range slices.Concat(added, updated) {
		fresh := !s.installed
		if !fresh {
			s.size = -1 // rewrite every slot and the rule
		}
		commit, err := b.queueApply(s, plans[i].snap, plans[i].plan, fresh)
		if err != nil {
			return nil, err
		}
		commits = append(commits, commit)
	}
	b.writeHooks()
	for _, old := range removed {
		b.delObjects(old, true)
	}
	return commits, nil
}

// delObjects queues the deletion of s's maps and backend chains, and of
// its counter if counter is set. No rule may name them any more.
func (b *Balancer) delObjects(s *service, counter bool) {
	b.conn.DelSet(s.set)
	b.conn.DelSet(s.bset)
	for _, addr := range sortedAddrs(s.chains) {
		b.delChain(s, addr)
	}
	if counter {
		b.conn.DeleteObject(&nftables.CounterObj{Table: b.table, Name: serviceCounter(s.svc.Name)})
	}
}

// Pool returns the pool of the named service, or nil.
func (b *Balancer) Pool(name string) *balancer.Pool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.services[name]; s != nil {
		return s.pool
	}
	return nil
}

// Sync waits until the balancer is serving, then applies every service's
// current pool snapshot now, if the kernel does not reflect it yet, and
// returns when the batches are committed. The control loop does the same
// on its own; Sync is for callers that must know a change is in the
// kernel before going on. It returns ctx.Err() if ctx ends first, and
// [ErrServerClosed] once the balancer stopped.
func (b *Balancer) Sync(ctx context.Context) error {
	select {
	case <-b.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != serving {
		return ErrServerClosed
	}
	var errs []error
	for _, s := range b.sortedServices() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.applyLocked(s, s.pool.Snapshot()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// watch applies each new snapshot of s's pool until s is removed or
// replaced or the balancer stops, retrying a refused batch every
// RetryInterval.
func (b *Balancer) watch(s *service) {
	defer b.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		snap := s.pool.Snapshot()
		b.mu.Lock()
		if b.state != serving || b.services[s.svc.Name] != s {
			b.mu.Unlock()
			return
		}
		err := b.applyLocked(s, snap)
		b.mu.Unlock()
		if err != nil {
			b.log.Error("iplb: apply failed; will retry", "service", s.svc.Name, "pool", s.pool.Name(), "err", err, "retry", b.cfg.RetryInterval)
			retry.Reset(b.cfg.RetryInterval)
		}
		select {
		case <-snap.Changed():
			retry.Stop()
		case <-retry.C:
		case <-s.stop:
			return
		}
	}
}

// planned is a service's plan for a snapshot.
type planned struct {
	snap *balancer.Snapshot
	plan plan
}

// plan computes the plans of svcs for their pools' current snapshots,
// before anything is queued: a batch is never left half queued.
func (b *Balancer) plan(svcs []*service) ([]planned, error) {
	out := make([]planned, len(svcs))
	for i, s := range svcs {
		snap := s.pool.Snapshot()
		p, err := s.planFor(snap)
		if err != nil {
			return nil, err
		}
		out[i] = planned{snap, p}
	}
	return out, nil
}

// plan is the kernel state wanted for one snapshot of a service.
type plan struct {
	size   int
	table  *maglev.Table
	ids    map[uint64]netip.AddrPort
	chains map[netip.AddrPort]bool
}

// planFor computes the slot table and backend chains for snap. Every
// member of the snapshot gets a chain (so its counter survives health
// changes); only the ready ones own slots, in proportion to their
// effective weights.
func (s *service) planFor(snap *balancer.Snapshot) (plan, error) {
	p := plan{ids: map[uint64]netip.AddrPort{}, chains: map[netip.AddrPort]bool{}}
	for _, e := range snap.Members {
		if addr := unmap(e.Addr()); checkBackend(&s.svc, addr) == nil {
			p.chains[addr] = true
		}
	}
	ids := make([]uint64, 0, len(snap.Ready))
	weights := make([]float64, 0, len(snap.Ready))
	for _, w := range snap.Ready {
		addr := unmap(w.Endpoint.Addr())
		if err := checkBackend(&s.svc, addr); err != nil {
			return plan{}, err
		}
		id := balancer.HashAddrPort(addr)
		p.ids[id] = addr
		p.chains[addr] = true
		ids = append(ids, id)
		weights = append(weights, w.Weight)
	}
	p.size = s.svc.TableSize
	if p.size == 0 {
		p.size = autoSize(max(len(p.chains), len(ids)))
	}
	if len(ids) > 0 {
		t, err := maglev.NewTable(ids, weights, p.size)
		if err != nil {
			return plan{}, fmt.Errorf("iplb: service %s: %w", s.svc.Name, err)
		}
		p.table = t
	}
	return p, nil
}

// unmap turns an IPv4-mapped IPv6 backend address into plain IPv4, the
// form the kernel maps hold.
func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// applyLocked brings the kernel to snap in one batch, unless it already
// reflects it. b.mu must be held and the balancer serving.
func (b *Balancer) applyLocked(s *service, snap *balancer.Snapshot) error {
	if s.applied && s.err == nil && s.version == snap.Version {
		return nil
	}
	p, err := s.planFor(snap)
	if err != nil {
		s.err = err
		return err
	}
	commit, err := b.queueApply(s, snap, p, false)
	if err == nil && s.next != s.size {
		b.writeHooks()
	}
	start := time.Now()
	if err == nil {
		err = b.conn.Flush()
		if err != nil {
			err = fmt.Errorf("iplb: service %s: apply snapshot %d: %w", s.svc.Name, snap.Version, err)
		}
	}
	if err != nil {
		s.next, s.err = s.size, err
		return err
	}
	commit()
	b.log.Debug("iplb: applied", "service", s.svc.Name, "pool", s.pool.Name(), "version", snap.Version,
		"ready", len(snap.Ready), "slots", s.size, "took", time.Since(start))
	return nil
}

// queueApply queues the operations that bring s's kernel state to snap:
// new backend chains, the changed slots (all of them when the table size
// changes, with the rule's modulus), removed chains. fresh creates the
// service's maps and counter first. It returns the function that records
// the new state once the batch is committed; the caller flushes. When the
// modulus changes, the caller's batch must rewrite the hooks (applyLocked
// does it here; changes and Serve rewrite them anyway).
func (b *Balancer) queueApply(s *service, snap *balancer.Snapshot, p plan, fresh bool) (func(), error) {
	c := b.conn
	if fresh {
		if !s.counter {
			c.AddObj(&nftables.CounterObj{Table: b.table, Name: serviceCounter(s.svc.Name)})
		}
		if err := errors.Join(c.AddSet(s.set, nil), c.AddSet(s.bset, nil)); err != nil {
			return nil, fmt.Errorf("iplb: service %s: %w", s.svc.Name, err)
		}
	}
	var added, removed []netip.AddrPort
	for _, addr := range sortedAddrs(p.chains) {
		if !s.chains[addr] {
			added = append(added, addr)
		}
	}
	for _, addr := range sortedAddrs(s.chains) {
		if !p.chains[addr] {
			removed = append(removed, addr)
		}
	}
	elemErr := b.addBackends(s, added)
	resized := fresh || p.size != s.size
	switch {
	case elemErr != nil:
	case resized:
		if !fresh {
			c.FlushSet(s.set)
		}
		if p.table != nil {
			elemErr = b.putSlots(s, p, allSlots(p.size))
		}
	case p.table == nil:
		if s.table != nil {
			c.FlushSet(s.set)
		}
	default:
		diff := p.table.Diff(s.table)
		if s.table != nil && len(diff) > 0 {
			elemErr = b.delSlots(s, diff)
		}
		if elemErr == nil {
			elemErr = b.putSlots(s, p, diff)
		}
	}
	if elemErr == nil {
		elemErr = b.delBackends(s, removed)
	}
	if elemErr != nil {
		return nil, fmt.Errorf("iplb: service %s: %w", s.svc.Name, elemErr)
	}
	s.next = p.size
	return func() {
		s.installed, s.counter = true, true
		s.size, s.table, s.ids, s.chains = p.size, p.table, p.ids, p.chains
		s.version, s.applied, s.err = snap.Version, true, nil
	}, nil
}

// allSlots returns 0..n-1.
func allSlots(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// putSlots queues the new owners of slots.
func (b *Balancer) putSlots(s *service, p plan, slots []int) error {
	for len(slots) > 0 {
		n := min(len(slots), elemChunk)
		elems := make([]nftables.SetElement, n)
		for i, slot := range slots[:n] {
			elems[i] = slotElem(slot, p.ids[p.table.SlotID(slot)])
		}
		if err := b.conn.SetAddElements(s.set, elems); err != nil {
			return err
		}
		slots = slots[n:]
	}
	return nil
}

// delSlots queues the deletion of slots, before they get new owners: the
// kernel refuses to overwrite an element with different data (EBUSY).
func (b *Balancer) delSlots(s *service, slots []int) error {
	for len(slots) > 0 {
		n := min(len(slots), elemChunk)
		elems := make([]nftables.SetElement, n)
		for i, slot := range slots[:n] {
			elems[i] = nftables.SetElement{Key: slotKey(slot)}
		}
		if err := b.conn.SetDeleteElements(s.set, elems); err != nil {
			return err
		}
		slots = slots[n:]
	}
	return nil
}

// addBackends queues, for each backend, its counter, its counter chain
// and its element in the backend map.
func (b *Balancer) addBackends(s *service, addrs []netip.AddrPort) error {
	if len(addrs) == 0 {
		return nil
	}
	elems := make([]nftables.SetElement, 0, len(addrs))
	for _, addr := range addrs {
		name := backendName(s.svc.Name, addr)
		b.conn.AddObj(&nftables.CounterObj{Table: b.table, Name: name})
		ch := b.conn.AddChain(&nftables.Chain{Name: name, Table: b.table})
		b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: ch, Exprs: counterExprs(s.svc.Name, addr)})
		elems = append(elems, backendElem(s.svc.Name, addr))
	}
	for len(elems) > 0 {
		n := min(len(elems), elemChunk)
		if err := b.conn.SetAddElements(s.bset, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// delBackends queues the removal of backends' map elements, then of their
// chains and counters.
func (b *Balancer) delBackends(s *service, addrs []netip.AddrPort) error {
	if len(addrs) == 0 {
		return nil
	}
	elems := make([]nftables.SetElement, len(addrs))
	for i, addr := range addrs {
		elems[i] = nftables.SetElement{Key: addrPortData(addr)}
	}
	for len(elems) > 0 {
		n := min(len(elems), elemChunk)
		if err := b.conn.SetDeleteElements(s.bset, elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	for _, addr := range addrs {
		b.delChain(s, addr)
	}
	return nil
}

// delChain queues the removal of a backend's chain and counter; the map
// element jumping to it must be gone first.
func (b *Balancer) delChain(s *service, addr netip.AddrPort) {
	name := backendName(s.svc.Name, addr)
	ch := &nftables.Chain{Name: name, Table: b.table}
	b.conn.FlushChain(ch)
	b.conn.DelChain(ch)
	b.conn.DeleteObject(&nftables.CounterObj{Table: b.table, Name: name})
}

// writeHooks queues a rewrite of the prerouting and postrouting chains
// for every service, in name order, each with the modulus its pending
// batch gives it.
func (b *Balancer) writeHooks() {
	b.conn.FlushChain(b.pre)
	b.conn.FlushChain(b.post)
	b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: b.post, Exprs: anchorExprs()})
	for _, o := range b.sortedServices() {
		b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: b.pre, Exprs: serviceExprs(&o.svc, o.set, o.next)})
		b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: b.post, Exprs: countExprs(&o.svc, o.bset)})
		if o.svc.Mode == FullNAT {
			b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: b.post, Exprs: fullNATExprs(&o.svc)})
		}
	}
}

func (b *Balancer) sortedServices() []*service {
	return slices.SortedFunc(maps.Values(b.services), func(x, y *service) int { return cmp.Compare(x.svc.Name, y.svc.Name) })
}

func sortedAddrs(m map[netip.AddrPort]bool) []netip.AddrPort {
	return slices.SortedFunc(maps.Keys(m), netip.AddrPort.Compare)
}

// Lookup answers where the kernel sends a new flow from client to the
// named service, from the state it last applied: the backend, or false
// if the service is unknown, has no key (round robin), is of the other
// address family, or has no ready backend. It mirrors the kernel's jhash and
// scaling, so operators can ask "which backend gets this client port?"
// without sending a packet. Flows already in conntrack stay where they
// are, whatever Lookup says.
func (b *Balancer) Lookup(service string, client netip.AddrPort) (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.services[service]
	if s == nil || s.table == nil || client.Addr().Unmap().Is4() != s.svc.VIP.Addr().Is4() {
		return netip.AddrPort{}, false
	}
	h, bits := s.svc.hashing()
	if h == hashNone {
		return netip.AddrPort{}, false
	}
	return s.ids[s.table.SlotID(flowSlot(client, h, bits, s.svc.Seed, s.size))], true
}

// Stats reads the services' counters from the kernel (one netlink dump)
// and returns them with each service's data-plane state, in name order.
// Before Serve the counters are zero.
func (b *Balancer) Stats() ([]ServiceStats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var objs []nftables.Obj
	switch b.state {
	case stopped:
		return nil, ErrServerClosed
	case serving:
		var err error
		if objs, err = b.conn.GetObjects(b.table); err != nil {
			return nil, fmt.Errorf("iplb: read counters: %w", err)
		}
	}
	counters := make(map[string]*nftables.CounterObj, len(objs))
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			counters[c.Name] = c
		}
	}
	var out []ServiceStats
	for _, s := range b.sortedServices() {
		st := ServiceStats{
			Name: s.svc.Name, VIP: s.svc.VIP, Proto: s.svc.Proto, Mode: s.svc.Mode,
			TableSize: s.size, Version: s.version, Err: s.err,
		}
		if c := counters[serviceCounter(s.svc.Name)]; c != nil {
			st.Flows, st.Bytes = c.Packets, c.Bytes
		}
		slots := map[netip.AddrPort]int{}
		if s.table != nil {
			for i, n := range s.table.Counts() {
				slots[s.ids[s.table.IDs()[i]]] = n
			}
		}
		for _, addr := range sortedAddrs(s.chains) {
			bs := BackendStats{Addr: addr, Slots: slots[addr]}
			if c := counters[backendName(s.svc.Name, addr)]; c != nil {
				bs.Flows, bs.Bytes = c.Packets, c.Bytes
			}
			st.Backends = append(st.Backends, bs)
		}
		out = append(out, st)
	}
	return out, nil
}
