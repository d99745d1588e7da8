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
// All methods are safe for concurrent use. Changes are serialized: each is
// one nftables batch sent under the balancer's mutex, and blocks for the
// few milliseconds the kernel takes to commit it.
type Balancer struct {
	cfg   Config
	log   *slog.Logger
	conn  nftConn
	table *nftables.Table
	pre   *nftables.Chain
	post  *nftables.Chain

	mu       sync.Mutex
	services map[string]*service
	closed   bool
	wg       sync.WaitGroup
}

// service is one virtual service and the kernel state that mirrors it,
// updated only after a batch commits.
type service struct {
	svc  Service
	pool *balancer.Pool
	set  *nftables.Set // slot → backend address
	bset *nftables.Set // backend address → counter chain
	stop chan struct{}

	size    int                       // modulus in the kernel rule
	table   *maglev.Table             // slots in the kernel map; nil: empty
	ids     map[uint64]netip.AddrPort // table id → backend
	chains  map[netip.AddrPort]bool   // backend chains in the kernel
	version uint64                    // snapshot version the kernel reflects
	applied bool
	err     error
}

// New creates the balancer's table, replacing one of the same name left
// by an earlier run in the same atomic batch, and returns a balancer
// with no services. It needs CAP_NET_ADMIN.
func New(cfg Config) (*Balancer, error) {
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

func newBalancer(cfg Config, c nftConn) (*Balancer, error) {
	if cfg.Table == "" {
		cfg.Table = "lbkit"
	}
	if cfg.RetryInterval < 0 {
		return nil, errors.New("iplb: RetryInterval must not be negative")
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	t := &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	b := &Balancer{
		cfg: cfg, log: log, conn: c, table: t,
		pre: &nftables.Chain{
			Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
		},
		post: &nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		},
		services: make(map[string]*service),
	}
	// Add first so that the delete cannot fail on a missing table: the
	// batch replaces a stale table or creates a fresh one, atomically.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	c.AddChain(b.pre)
	c.AddChain(b.post)
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("iplb: create table inet %s: %w", cfg.Table, err)
	}
	return b, nil
}

// AddService configures svc and installs it in the kernel before
// returning, then follows its pool: every new snapshot is applied by a
// goroutine of the balancer within milliseconds (unless Config.Manual). It returns the pool, the
// one given in svc.Pool or one created from svc.Backends. The error is
// [ErrExists] (wrapped) for a duplicate name or VIP, or says why the
// kernel refused the batch.
func (b *Balancer) AddService(svc Service) (*balancer.Pool, error) {
	if err := svc.validate(); err != nil {
		return nil, err
	}
	pool := svc.Pool
	if pool == nil {
		size := svc.TableSize
		if size == 0 {
			size = autoSize(len(svc.Backends))
		}
		p, err := balancer.New(balancer.Config{Builder: maglev.Builder{Size: size}, Logger: b.log})
		if err != nil {
			return nil, fmt.Errorf("iplb: service %s: %w", svc.Name, err)
		}
		if err := p.Set(svc.Backends); err != nil {
			return nil, fmt.Errorf("iplb: service %s: %w", svc.Name, err)
		}
		pool = p
	}
	svc.Pool, svc.Backends = pool, nil
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	for _, o := range b.services {
		if o.svc.Name == svc.Name || (o.svc.VIP == svc.VIP && o.svc.Proto == svc.Proto) {
			return nil, fmt.Errorf("%w: %s and %s on %v/%v", ErrExists, o.svc.Name, svc.Name, svc.VIP, svc.Proto)
		}
	}
	s := &service{
		svc:    svc,
		pool:   pool,
		set:    slotMap(b.table, &svc),
		bset:   backendMap(b.table, &svc),
		stop:   make(chan struct{}),
		ids:    map[uint64]netip.AddrPort{},
		chains: map[netip.AddrPort]bool{},
	}
	b.services[svc.Name] = s
	if err := b.applyLocked(s, pool.Snapshot(), true); err != nil {
		delete(b.services, svc.Name)
		return nil, err
	}
	if !b.cfg.Manual {
		b.wg.Add(1)
		go b.watch(s)
	}
	return pool, nil
}

// RemoveService deletes the service's rules, map, chains and counters in
// one batch. Established flows keep their translation in conntrack until
// they end. It returns [ErrNotFound] for an unknown name.
func (b *Balancer) RemoveService(name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	s := b.services[name]
	if s == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	delete(b.services, name)
	b.writeHooks(nil, 0)
	b.conn.DelSet(s.set)
	b.conn.DelSet(s.bset)
	for _, addr := range sortedAddrs(s.chains) {
		b.delChain(s, addr)
	}
	b.conn.DeleteObject(&nftables.CounterObj{Table: b.table, Name: serviceCounter(name)})
	if err := b.conn.Flush(); err != nil {
		b.services[name] = s
		return fmt.Errorf("iplb: remove service %s: %w", name, err)
	}
	close(s.stop)
	return nil
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

// Sync applies every service's current pool snapshot now, if the kernel
// does not reflect it yet, and returns when the batches are committed.
// The background goroutines do the same on their own; Sync is for callers
// that must know a change is in the kernel before going on.
func (b *Balancer) Sync(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	var errs []error
	for _, s := range b.sortedServices() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.applyLocked(s, s.pool.Snapshot(), false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// watch applies each new snapshot of s's pool until s is removed or the
// balancer closed, retrying a refused batch every RetryInterval.
func (b *Balancer) watch(s *service) {
	defer b.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		snap := s.pool.Snapshot()
		b.mu.Lock()
		if b.closed || b.services[s.svc.Name] != s {
			b.mu.Unlock()
			return
		}
		err := b.applyLocked(s, snap, false)
		b.mu.Unlock()
		if err != nil {
			b.log.Error("iplb: apply failed; will retry", "service", s.svc.Name, "err", err, "retry", b.cfg.RetryInterval)
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

// plan is the kernel state wanted for one snapshot of a service.
type plan struct {
	size   int
	table  *maglev.Table
	ids    map[uint64]netip.AddrPort
	chains map[netip.AddrPort]bool
}

// planFor computes the slot table and backend chains for snap. Every pool
// member gets a chain (so its counter survives health changes); only the
// ready ones own slots, in proportion to their effective weights.
func (s *service) planFor(snap *balancer.Snapshot, members []*balancer.Endpoint) (plan, error) {
	p := plan{ids: map[uint64]netip.AddrPort{}, chains: map[netip.AddrPort]bool{}}
	for _, e := range members {
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

// applyLocked brings the kernel to snap in one batch: new backend chains,
// the changed slots (all of them when the table size changes, with the
// rule's modulus), removed chains. fresh creates the service's map and
// counter in the same batch. b.mu must be held.
func (b *Balancer) applyLocked(s *service, snap *balancer.Snapshot, fresh bool) error {
	if !fresh && s.applied && s.err == nil && s.version == snap.Version {
		return nil
	}
	p, err := s.planFor(snap, s.pool.Endpoints())
	if err != nil {
		s.err = err
		return err
	}
	c := b.conn
	if fresh {
		c.AddObj(&nftables.CounterObj{Table: b.table, Name: serviceCounter(s.svc.Name)})
		if err := errors.Join(c.AddSet(s.set, nil), c.AddSet(s.bset, nil)); err != nil {
			return fmt.Errorf("iplb: service %s: %w", s.svc.Name, err)
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
		return fmt.Errorf("iplb: service %s: %w", s.svc.Name, elemErr)
	}
	if resized {
		b.writeHooks(s, p.size)
	}
	start := time.Now()
	if err := c.Flush(); err != nil {
		err = fmt.Errorf("iplb: service %s: apply snapshot %d: %w", s.svc.Name, snap.Version, err)
		s.err = err
		return err
	}
	b.log.Debug("iplb: applied", "service", s.svc.Name, "version", snap.Version,
		"ready", len(snap.Ready), "slots", p.size, "resized", resized, "took", time.Since(start))
	s.size, s.table, s.ids, s.chains = p.size, p.table, p.ids, p.chains
	s.version, s.applied, s.err = snap.Version, true, nil
	return nil
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
// for every service, in name order, with size as the modulus of s (which
// may be nil) and each other service's current one.
func (b *Balancer) writeHooks(s *service, size int) {
	b.conn.FlushChain(b.pre)
	b.conn.FlushChain(b.post)
	for _, o := range b.sortedServices() {
		sz := o.size
		if o == s {
			sz = size
		}
		b.conn.AddRule(&nftables.Rule{Table: b.table, Chain: b.pre, Exprs: serviceExprs(&o.svc, o.set, sz)})
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
// named Consistent service, from the state it last applied: the backend,
// or false if the service is unknown, round robin, of the other address
// family, or has no ready backend. It mirrors the kernel's jhash and
// scaling, so operators can ask "which backend gets this client port?"
// without sending a packet. Flows already in conntrack stay where they
// are, whatever Lookup says.
func (b *Balancer) Lookup(service string, client netip.AddrPort) (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.services[service]
	if s == nil || s.table == nil || s.svc.Scheduler != Consistent || client.Addr().Unmap().Is4() != s.svc.VIP.Addr().Is4() {
		return netip.AddrPort{}, false
	}
	return s.ids[s.table.SlotID(flowSlot(client, s.svc.Seed, s.size))], true
}

// Stats reads the services' counters from the kernel (one netlink dump)
// and returns them with each service's data-plane state, in name order.
func (b *Balancer) Stats() ([]ServiceStats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	objs, err := b.conn.GetObjects(b.table)
	if err != nil {
		return nil, fmt.Errorf("iplb: read counters: %w", err)
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

// Close stops following the pools, waits for the goroutines, deletes the
// balancer's table (its services stop at once; flows already translated
// keep their conntrack entries until they end) and closes the netlink
// socket. It is safe to call more than once.
func (b *Balancer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	for _, s := range b.services {
		close(s.stop)
	}
	b.mu.Unlock()
	b.wg.Wait()
	b.conn.DelTable(b.table)
	err := b.conn.Flush()
	if err != nil {
		err = fmt.Errorf("iplb: delete table inet %s: %w", b.cfg.Table, err)
	}
	return errors.Join(err, b.conn.CloseLasting())
}
