package l2lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// Balancer is a layer-2 balancer: the XDP program attached to an
// interface and the control loop that keeps its maps in step with the
// services' pools and the neighbour table.
//
// A Balancer is not a listener server: the kernel forwards the frames.
// [Balancer.Serve] fills the maps, attaches the program and runs the
// control loop until its context ends or [Balancer.Shutdown] or
// [Balancer.Close] is called; it then detaches the program.
//
// The control loop applies a pool's new snapshot (health, drain, weight,
// membership, member metadata) as soon as the pool publishes it, so a
// health event takes effect within one health-check interval. It writes a
// backend that becomes ready into the backends map before the ring, and
// takes a failed one out of the ring before marking it down, so the ring
// never names a backend the program would refuse.
//
// All methods are safe for concurrent use.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	dp      *dataplane
	ns      netns.NsHandle // namespace of the thread that called New
	ifindex int
	mac     [6]byte
	nh      *netlink.Handle
	kick    chan struct{}

	mu       sync.Mutex
	state    runState
	xdp      link.Link
	mode     AttachMode
	services []*serviceState           // in the order they were added
	neigh    map[netip.Addr][6]byte    // last known MAC of each backend host
	asked    map[netip.Addr]time.Time  // when resolution was last requested
	badMAC   map[netip.AddrPort]string // invalid MetaMAC values, logged once
	applied  chan struct{}             // closed after each pass of the loop
	nextID   uint32
	freeIDs  []uint32 // FIFO: a freed id is reused as late as possible
	nextSvc  uint32
	freeSvcs []uint32 // service ids, FIFO as backend ids

	lctx     context.Context // the control loop's; ends when Serve stops
	started  chan struct{}   // closed when serving starts or the balancer stops
	stop     chan struct{}   // closed by Shutdown and Close
	done     chan struct{}   // closed when Serve has detached
	wg       sync.WaitGroup
	closeErr error
}

// runState is where a Balancer is in its life.
type runState uint8

const (
	idle    runState = iota // New returned; Serve not called
	serving                 // the program is attached
	stopped                 // Shutdown or Close was called, or Serve failed
)

type serviceState struct {
	id      uint32
	svc     Service
	stop    chan struct{}      // closed when the service is removed or replaced
	snap    *balancer.Snapshot // last applied
	table   *maglev.Table      // last written; nil: all slots 0
	stale   bool               // the ring holds another service's slots: write all
	conf    balancer.Key       // the key written to the service_conf map
	confSet bool               // conf is written
	ringIDs []uint64           // the table's Maglev ids and weights
	ringW   []float64
	members map[netip.AddrPort]*member
	order   []netip.AddrPort
	dirty   bool
}

type member struct {
	id         uint32
	mac        [6]byte // as last written; zero while unresolved
	up, inRing bool    // as last written
	written    bool
}

// New checks cfg, looks the interface up and loads the XDP program and
// its maps, without attaching it: nothing reaches the data plane until
// [Balancer.Serve]. The interface, the netlink handle and the attachment
// live in the network namespace of the calling thread: to run a balancer
// in another namespace, call New from a thread switched into it (as
// netlab's Host.Do does); Serve and every other method work from any
// goroutine afterwards.
//
// New needs root (CAP_BPF, CAP_NET_ADMIN). Close the balancer to free the
// program, whether it was served or not.
func New(cfg Config) (*Balancer, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	nh, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("l2lb: netlink: %w", err)
	}
	var l netlink.Link
	if cfg.Interface != "" {
		l, err = nh.LinkByName(cfg.Interface)
	} else {
		l, err = nh.LinkByIndex(cfg.InterfaceIndex)
	}
	if err != nil {
		nh.Close()
		return nil, fmt.Errorf("l2lb: interface %q (index %d): %w", cfg.Interface, cfg.InterfaceIndex, err)
	}
	hw := l.Attrs().HardwareAddr
	if len(hw) != 6 {
		nh.Close()
		return nil, fmt.Errorf("l2lb: interface %s has no Ethernet address", l.Attrs().Name)
	}
	ns, err := netns.Get()
	if err != nil {
		nh.Close()
		return nil, fmt.Errorf("l2lb: network namespace: %w", err)
	}
	dp, err := loadDataplane(cfg.MaxServices, cfg.MaxBackends, cfg.ConnTableSize)
	if err != nil {
		ns.Close()
		nh.Close()
		return nil, err
	}
	b := &Balancer{
		cfg:     cfg,
		log:     log.With("interface", l.Attrs().Name),
		dp:      dp,
		ns:      ns,
		ifindex: l.Attrs().Index,
		mac:     [6]byte(hw),
		nh:      nh,
		kick:    make(chan struct{}, 1),
		neigh:   make(map[netip.Addr][6]byte),
		asked:   make(map[netip.Addr]time.Time),
		badMAC:  make(map[netip.AddrPort]string),
		applied: make(chan struct{}),
		nextID:  1, // 0 is reserved: never up
		started: make(chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	for _, svc := range cfg.Services {
		id, _, err := b.allocService()
		if err != nil {
			b.release()
			return nil, err
		}
		b.services = append(b.services, b.newService(id, svc))
	}
	return b, nil
}

func (b *Balancer) newService(id uint32, svc Service) *serviceState {
	return &serviceState{id: id, svc: svc, stop: make(chan struct{}), members: make(map[netip.AddrPort]*member), dirty: true}
}

// Serve fills the maps from the services' pools, attaches the program
// (see [AttachMode]) and runs the control loop until ctx ends or Shutdown
// or Close is called. It then detaches the program, frees its maps and
// returns nil: established flows reach the balancer's own stack from
// then on. Cancelling ctx means the same as Close. Serve returns without
// waiting for backend MACs: call [Balancer.Sync] for that.
//
// Serve returns an error if the maps cannot be written or the program
// attached, and [ErrServerClosed] if the balancer was already served or
// stopped.
func (b *Balancer) Serve(ctx context.Context) error {
	b.mu.Lock()
	if b.state != idle {
		b.mu.Unlock()
		return ErrServerClosed
	}
	b.mu.Unlock()
	b.refreshNeighbours()
	b.mu.Lock()
	err := b.dp.setConfig(b.mac)
	for _, s := range b.services {
		if err == nil {
			err = b.applyLocked(s)
		}
	}
	if err == nil {
		err = b.dp.setServices(b.vipMapLocked())
	}
	if err == nil {
		b.xdp, b.mode, err = b.attach()
	}
	if err != nil {
		b.state = stopped
		close(b.started)
		b.release()
		close(b.done)
		b.mu.Unlock()
		return err
	}
	b.state = serving
	close(b.started)
	lctx, cancel := context.WithCancel(context.Background())
	b.lctx = lctx
	for _, s := range b.services {
		b.startWatch(s)
	}
	b.wg.Add(1)
	go b.loop(lctx)
	b.log.Info("l2lb: attached", "mode", b.mode, "services", len(b.services))
	b.mu.Unlock()

	select {
	case <-ctx.Done():
	case <-b.stop:
	}
	cancel()
	b.mu.Lock()
	b.state = stopped
	b.mu.Unlock()
	b.wg.Wait()
	b.mu.Lock()
	b.closeErr = b.xdp.Close()
	b.release()
	b.mu.Unlock()
	close(b.done)
	return nil
}

// release frees the program, its maps and the handles.
func (b *Balancer) release() {
	b.closeErr = errors.Join(b.closeErr, b.dp.Close())
	b.nh.Close()
	b.ns.Close()
}

// vipMapLocked returns the VIP table the services make.
func (b *Balancer) vipMapLocked() map[VIP]uint32 {
	m := make(map[VIP]uint32, len(b.services))
	for _, s := range b.services {
		m[VIP{s.svc.VIP, s.svc.Proto}] = s.id
	}
	return m
}

// startWatch starts the goroutine that kicks the loop when s's pool
// publishes a snapshot. b.mu must be held.
func (b *Balancer) startWatch(s *serviceState) {
	ctx := b.lctx
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-s.svc.Pool.Snapshot().Changed():
				b.poke()
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
}

// Shutdown stops the control loop, waits until Serve has detached the
// program, or until ctx ends (then it returns ctx.Err(); Serve finishes
// on its own). A kernel data plane has no connections of its own to
// drain: to let flows finish, take the VIP away from the balancer (stop
// announcing it) first. Before Serve, Shutdown frees the program. It is
// safe to call more than once.
func (b *Balancer) Shutdown(ctx context.Context) error {
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

// Close stops the balancer as Shutdown does and waits for Serve to
// detach the program. It is idempotent, and safe before, during or after
// Serve.
func (b *Balancer) Close() error {
	if b.halt() {
		<-b.done
		return b.closeErr
	}
	return nil
}

// halt moves the balancer to stopped and reports whether Serve runs (or
// ran) and closes done.
func (b *Balancer) halt() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == idle {
		b.state = stopped
		close(b.started)
		b.release()
		close(b.done)
		return false
	}
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	return true
}

// attach attaches the program in the configured mode, on a thread
// switched into the balancer's namespace (the kernel resolves the
// interface index there). b.mu must be held.
func (b *Balancer) attach() (link.Link, AttachMode, error) {
	mode := b.cfg.Mode
	if mode == AttachAuto {
		var err error
		if mode, err = b.autoMode(); err != nil {
			return nil, 0, err
		}
	}
	var l link.Link
	err := b.inNS(func() (err error) {
		l, err = attachXDP(b.dp, b.ifindex, mode)
		if err != nil && b.cfg.Mode == AttachAuto && mode == AttachDriver {
			b.log.Info("l2lb: driver mode refused; attaching in generic mode", "err", err)
			mode = AttachGeneric
			l, err = attachXDP(b.dp, b.ifindex, mode)
		}
		return err
	})
	return l, mode, err
}

// attachXDP attaches the program in mode (driver or generic).
func attachXDP(dp *dataplane, ifindex int, mode AttachMode) (link.Link, error) {
	flags := link.XDPDriverMode
	if mode == AttachGeneric {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: dp.objs.L2lbXdp, Interface: ifindex, Flags: flags})
	if err != nil {
		return nil, fmt.Errorf("l2lb: attach XDP in %s mode: %w", mode, err)
	}
	return l, nil
}

// inNS runs fn on a thread switched into the balancer's namespace. If
// the thread cannot be switched back it stays locked, and the runtime
// discards it.
func (b *Balancer) inNS(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("l2lb: network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(b.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("l2lb: enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("l2lb: leave network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// AddService adds svc. While serving, its backends and ring are written
// first and the VIP table then flips to include it, so a frame for its
// VIP meets no service (it passes) or the whole new one; before Serve it
// joins the services Serve installs. It returns an error for a VIP and
// protocol already served or past Config.MaxServices.
func (b *Balancer) AddService(svc Service) error {
	return b.change(func(cur []Service) ([]Service, error) {
		return append(cur, svc), nil
	})
}

// UpdateService replaces the service with svc's VIP and protocol (a new
// pool, key or anything else). The service keeps its id, so its
// connection table entries stay valid: established flows keep their
// backend while it stays a member and up; new flows follow the new pool.
// It returns [ErrNotFound] (wrapped) if there is no such service.
func (b *Balancer) UpdateService(svc Service) error {
	return b.change(func(cur []Service) ([]Service, error) {
		i := slices.IndexFunc(cur, func(s Service) bool { return s.VIP == svc.VIP && normProto(s.Proto) == normProto(svc.Proto) })
		if i < 0 {
			return nil, fmt.Errorf("%w: %v/%v", ErrNotFound, svc.VIP, normProto(svc.Proto))
		}
		cur[i] = svc
		return cur, nil
	})
}

// RemoveService removes the service of vip and proto: the VIP table flips
// to one without it (its frames then pass to the balancer's stack), then
// its backends are cleared. It returns [ErrNotFound] (wrapped) if there
// is no such service.
func (b *Balancer) RemoveService(vip netip.AddrPort, proto Protocol) error {
	return b.change(func(cur []Service) ([]Service, error) {
		i := slices.IndexFunc(cur, func(s Service) bool { return s.VIP == vip && normProto(s.Proto) == normProto(proto) })
		if i < 0 {
			return nil, fmt.Errorf("%w: %v/%v", ErrNotFound, vip, normProto(proto))
		}
		return slices.Delete(cur, i, i+1), nil
	})
}

// SetServices makes svcs the balancer's services, matched to the current
// ones by VIP and protocol: new ones are added, missing ones removed,
// others updated, with one flip of the VIP table, so a frame meets the
// old set of services or the new one. Flows of services that stay keep
// their backends.
func (b *Balancer) SetServices(svcs []Service) error {
	return b.change(func([]Service) ([]Service, error) {
		return slices.Clone(svcs), nil
	})
}

// Services returns the configured services, with defaults filled in.
func (b *Balancer) Services() []Service {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Service, len(b.services))
	for i, s := range b.services {
		out[i] = s.svc
	}
	return out
}

func normProto(p Protocol) Protocol {
	if p == 0 {
		return TCP
	}
	return p
}

// change applies edit to the list of services and brings the data plane
// to the result: new and changed services' backends and rings first, then
// one flip of the VIP table, then the removed services' backends.
func (b *Balancer) change(edit func([]Service) ([]Service, error)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stopped {
		return ErrServerClosed
	}
	cur := make([]Service, len(b.services))
	for i, s := range b.services {
		cur[i] = s.svc
	}
	list, err := edit(cur)
	if err != nil {
		return err
	}
	if err := validateServices(list, b.cfg.MaxServices); err != nil {
		return err
	}
	old := make(map[VIP]*serviceState, len(b.services))
	for _, s := range b.services {
		old[VIP{s.svc.VIP, s.svc.Proto}] = s
	}
	next := make([]*serviceState, 0, len(list))
	var added, updated []*serviceState
	kept := make(map[*serviceState]bool)
	for _, svc := range list {
		o := old[VIP{svc.VIP, svc.Proto}]
		switch {
		case o == nil:
			s := b.newService(0, svc) // id below
			next = append(next, s)
			added = append(added, s)
		case o.svc == svc:
			next = append(next, o)
			kept[o] = true
		default:
			s := &serviceState{id: o.id, svc: svc, stop: make(chan struct{}), table: o.table, stale: o.stale, conf: o.conf, confSet: o.confSet,
				ringIDs: o.ringIDs, ringW: o.ringW, members: o.members, order: o.order, dirty: true}
			next = append(next, s)
			updated = append(updated, s)
			kept[o] = true
		}
	}
	var removed []*serviceState
	for _, s := range b.services {
		if !kept[s] {
			removed = append(removed, s)
		}
	}
	nRemoved := len(removed)
	if b.state == idle {
		for _, s := range removed {
			b.freeService(s.id)
		}
		for _, s := range added {
			var err error
			if s.id, s.stale, err = b.allocService(); err != nil {
				return err // cannot happen: validateServices bounds the list
			}
		}
		b.services = next
		return nil
	}
	if free := b.cfg.MaxServices - int(b.nextSvc) + len(b.freeSvcs); len(added) > free && len(removed) > 0 {
		// Too few free ids until the removed services' ids are free: take
		// those services out first, with a VIP table of the others. A
		// frame still meets the old or the new state of its own service.
		var interim []*serviceState
		for _, s := range b.services {
			if kept[s] {
				interim = append(interim, s)
			}
		}
		prev := b.services
		b.services = interim
		if err := b.dp.setServices(b.vipMapLocked()); err != nil {
			b.services = prev
			return err
		}
		b.retire(removed)
		removed = nil
	}
	var ids []uint32
	for _, s := range added {
		var err error
		if s.id, s.stale, err = b.allocService(); err != nil {
			for _, id := range ids {
				b.freeService(id)
			}
			return err
		}
		ids = append(ids, s.id)
	}
	fail := func(err error) error {
		for _, s := range added {
			s.stale = true
			b.dropMembers(s)
			b.freeService(s.id)
		}
		return err
	}
	for _, s := range slices.Concat(added, updated) {
		if err := b.applyLocked(s); err != nil {
			return fail(err)
		}
	}
	prev := b.services
	b.services = next
	if err := b.dp.setServices(b.vipMapLocked()); err != nil {
		b.services = prev
		for _, s := range prev {
			s.dirty = true // updated services' maps may hold the new pools: reapply
		}
		return fail(err)
	}
	for _, s := range prev {
		if kept[s] && !slices.Contains(next, s) {
			close(s.stop) // replaced by an update
		}
	}
	b.retire(removed)
	for _, s := range slices.Concat(added, updated) {
		b.startWatch(s)
	}
	b.log.Info("l2lb: services changed", "added", len(added), "updated", len(updated), "removed", nRemoved)
	return nil
}

// retire stops following removed services, clears their backends and
// frees their ids. The VIP table must no longer name them.
func (b *Balancer) retire(removed []*serviceState) {
	for _, s := range removed {
		close(s.stop)
		b.dropMembers(s)
		b.freeService(s.id)
	}
}

// dropMembers clears the backend entries of s's members and frees their
// ids.
func (b *Balancer) dropMembers(s *serviceState) {
	for addr, m := range s.members {
		if err := b.dp.setBackend(m.id, BackendEntry{}); err != nil {
			b.log.Error("l2lb: clearing a removed service's backend", "service", s.svc.VIP, "backend", addr, "err", err)
		}
		b.freeIDs = append(b.freeIDs, m.id)
	}
	clear(s.members)
}

// allocService returns a free service id: fresh ones first, then freed
// ones, oldest first (reused reports one, whose ring and counters are
// stale). A removed service's id is free only once the VIP table no
// longer names it.
func (b *Balancer) allocService() (id uint32, reused bool, err error) {
	if int(b.nextSvc) < b.cfg.MaxServices {
		b.nextSvc++
		return b.nextSvc - 1, false, nil
	}
	if len(b.freeSvcs) == 0 {
		return 0, false, fmt.Errorf("l2lb: out of service ids (MaxServices %d)", b.cfg.MaxServices)
	}
	id = b.freeSvcs[0]
	b.freeSvcs = b.freeSvcs[1:]
	return id, true, nil
}

// freeService returns a service id whose ring and counters are stale.
func (b *Balancer) freeService(id uint32) { b.freeSvcs = append(b.freeSvcs, id) }

func (b *Balancer) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// fastResolve is how often the neighbour table is re-read while some
// member's MAC is unknown (when shorter than ResolveInterval): reading it
// is cheap, and a new backend should not wait a full interval for its
// ARP answer to be noticed.
const fastResolve = 100 * time.Millisecond

// loop applies snapshots when pools change, re-reads the neighbour table
// every ResolveInterval (more often while a MAC is missing) and asks the
// kernel to resolve missing MACs.
func (b *Balancer) loop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.ResolveInterval)
	defer t.Stop()
	var fast <-chan time.Time // pending quick re-read, nil if none
	for {
		if b.resolveMissing() > 0 && fast == nil && fastResolve < b.cfg.ResolveInterval {
			fast = time.After(fastResolve)
		}
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		case <-t.C:
			b.refreshNeighbours()
		case <-fast:
			fast = nil
			b.refreshNeighbours()
		}
		b.applyAll()
	}
}

func (b *Balancer) applyAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.services {
		if err := b.applyLocked(s); err != nil {
			b.log.Error("l2lb: apply failed; retrying", "service", s.svc.VIP, "pool", s.svc.Pool.Name(), "err", err)
			s.dirty = true
		}
	}
	close(b.applied)
	b.applied = make(chan struct{})
}

// applyLocked brings service s's maps in step with its pool's current
// snapshot and the known MACs. b.mu must be held.
func (b *Balancer) applyLocked(s *serviceState) error {
	snap := s.svc.Pool.Snapshot()
	if snap == s.snap && !s.dirty {
		return nil
	}
	if !s.confSet || s.conf != s.svc.Key {
		if err := b.dp.setKey(s.id, s.svc.Key, s.svc.VIP.Addr().Is4()); err != nil {
			return err
		}
		s.conf, s.confSet = s.svc.Key, true
	}
	if s.stale {
		// A reused id: its counters and ring are another service's.
		if err := b.dp.resetTraffic(b.dp.objs.ServiceStats, s.id); err != nil {
			return err
		}
		s.table, s.ringIDs, s.ringW = nil, nil, nil
	}
	eps := snap.Members
	weight := make(map[netip.AddrPort]float64, len(snap.Ready))
	for _, w := range snap.Ready {
		weight[w.Endpoint.Addr()] = w.Weight
	}

	type change struct {
		m        *member
		up, ring bool
		mac      [6]byte
	}
	changes := make([]change, 0, len(eps))
	present := make(map[netip.AddrPort]bool, len(eps))
	var ringIDs []uint64
	var ringW []float64
	byMaglev := make(map[uint64]uint32)
	order := make([]netip.AddrPort, 0, len(eps))
	for _, ep := range eps {
		addr := ep.Addr()
		present[addr] = true
		order = append(order, addr)
		m := s.members[addr]
		if m == nil {
			id, err := b.allocID()
			if err != nil {
				return err
			}
			m = &member{id: id}
			s.members[addr] = m
		}
		c := change{m: m, mac: m.mac}
		mac, resolved := b.memberMAC(ep)
		if resolved {
			c.mac = mac
		}
		w, ready := weight[addr]
		c.ring = ready && resolved
		c.up = resolved && (ready || (ep.Draining() && (ep.Healthy() || snap.Panic)))
		if c.ring {
			mid := balancer.HashAddrPort(addr)
			ringIDs = append(ringIDs, mid)
			ringW = append(ringW, w)
			byMaglev[mid] = m.id
		}
		changes = append(changes, c)
	}

	write := func(c change) error {
		if c.m.written && c.m.up == c.up && c.m.mac == c.mac {
			return nil
		}
		if err := b.dp.setBackend(c.m.id, BackendEntry{MAC: c.mac, Up: c.up, Service: s.id}); err != nil {
			return err
		}
		c.m.written, c.m.up, c.m.mac = true, c.up, c.mac
		return nil
	}
	// 1. Backends that are (or stay) up, so the ring may name them.
	for _, c := range changes {
		if c.up {
			if err := write(c); err != nil {
				return err
			}
		}
	}
	// 2. The ring, as a delta from the last table written.
	if len(ringIDs) == 0 {
		if s.table != nil || s.stale {
			if err := b.dp.setSlots(s.id, allSlotsList(), make([]uint32, RingSize)); err != nil {
				return err
			}
			s.table, s.stale = nil, false
		}
	} else if s.table == nil || !slices.Equal(ringIDs, s.ringIDs) || !slices.Equal(ringW, s.ringW) {
		t, err := maglev.NewTable(ringIDs, ringW, RingSize)
		if err != nil {
			return fmt.Errorf("l2lb: service %v (pool %s): %w", s.svc.VIP, s.svc.Pool.Name(), err)
		}
		// Diff compares Maglev ids (address hashes); an address keeps its
		// backend id while it stays a member, and one that left was out
		// of the old table, so equal ids mean equal backend ids.
		slots := t.Diff(s.table)
		vals := make([]uint32, len(slots))
		for i, sl := range slots {
			vals[i] = byMaglev[t.SlotID(sl)]
		}
		if err := b.dp.setSlots(s.id, slots, vals); err != nil {
			return err
		}
		if len(slots) > 0 {
			b.log.Debug("l2lb: ring updated", "service", s.svc.VIP, "pool", s.svc.Pool.Name(), "slots", len(slots), "backends", len(ringIDs))
		}
		s.table, s.ringIDs, s.ringW, s.stale = t, ringIDs, ringW, false
	}
	for _, c := range changes {
		c.m.inRing = c.ring
	}
	// 3. Backends going down, then members that left.
	for _, c := range changes {
		if !c.up {
			if err := write(c); err != nil {
				return err
			}
		}
	}
	for addr, m := range s.members {
		if present[addr] {
			continue
		}
		if err := b.dp.setBackend(m.id, BackendEntry{}); err != nil {
			return err
		}
		delete(s.members, addr)
		b.freeIDs = append(b.freeIDs, m.id)
	}
	s.order = order
	s.snap, s.dirty = snap, false
	return nil
}

// memberMAC returns the MAC of a member: its MetaMAC metadata when set,
// else the neighbour table's entry for its address; false if neither
// gives one. b.mu must be held.
func (b *Balancer) memberMAC(ep *balancer.Endpoint) ([6]byte, bool) {
	if v := ep.Meta(MetaMAC); v != "" {
		hw, err := net.ParseMAC(v)
		if err != nil || len(hw) != 6 {
			if b.badMAC[ep.Addr()] != v {
				b.badMAC[ep.Addr()] = v
				b.log.Error("l2lb: member metadata \"mac\" is not an Ethernet address; the member gets no traffic",
					"backend", ep.Addr(), "mac", v)
			}
			return [6]byte{}, false
		}
		delete(b.badMAC, ep.Addr())
		return [6]byte(hw), true
	}
	mac, ok := b.neigh[ep.Addr().Addr().Unmap()]
	return mac, ok
}

var allSlotsList = sync.OnceValue(func() []int {
	s := make([]int, RingSize)
	for i := range s {
		s[i] = i
	}
	return s
})

// allocID returns a free backend id with zeroed counters.
func (b *Balancer) allocID() (uint32, error) {
	var id uint32
	switch {
	case int(b.nextID) < b.cfg.MaxBackends:
		id = b.nextID
		b.nextID++
	case len(b.freeIDs) > 0:
		id = b.freeIDs[0]
		b.freeIDs = b.freeIDs[1:]
	default:
		return 0, fmt.Errorf("l2lb: out of backend ids (MaxBackends %d)", b.cfg.MaxBackends)
	}
	return id, b.dp.resetTraffic(b.dp.objs.BackendStats, id)
}

// refreshNeighbours reads the interface's neighbour table and marks the
// services whose backends' MACs changed or appeared.
func (b *Balancer) refreshNeighbours() {
	list, err := b.nh.NeighList(b.ifindex, netlink.FAMILY_ALL)
	if err != nil {
		b.log.Warn("l2lb: reading the neighbour table", "err", err)
		return
	}
	const valid = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
		netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP
	b.mu.Lock()
	defer b.mu.Unlock()
	changed := false
	for _, n := range list {
		if n.State&valid == 0 || len(n.HardwareAddr) != 6 {
			continue
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		mac := [6]byte(n.HardwareAddr)
		if old, ok := b.neigh[a]; !ok || old != mac {
			b.neigh[a] = mac
			changed = true
		}
	}
	if changed {
		for _, s := range b.services {
			s.dirty = true
		}
	}
}

// resolveMissing asks the kernel to resolve every member whose MAC is
// unknown, at most once per ResolveInterval for each, and returns how many
// are unknown. The kernel sends ARP requests or neighbour solicitations;
// the answers show up at the next refreshNeighbours.
func (b *Balancer) resolveMissing() int {
	now := time.Now()
	b.mu.Lock()
	var missing, ask []netip.Addr
	for _, s := range b.services {
		for _, ep := range s.svc.Pool.Snapshot().Members {
			a := ep.Addr().Addr().Unmap()
			if ep.Meta(MetaMAC) != "" {
				continue // not looked up
			}
			if _, ok := b.neigh[a]; ok || slices.Contains(missing, a) {
				continue
			}
			missing = append(missing, a)
			if last, ok := b.asked[a]; !ok || now.Sub(last) >= b.cfg.ResolveInterval {
				b.asked[a] = now
				ask = append(ask, a)
			}
		}
	}
	for a := range b.asked {
		if !slices.Contains(missing, a) {
			delete(b.asked, a)
		}
	}
	b.mu.Unlock()
	for _, a := range ask {
		n := &netlink.Neigh{LinkIndex: b.ifindex, IP: net.IP(a.AsSlice()), Flags: netlink.NTF_USE}
		if a.Is4() {
			n.Family = netlink.FAMILY_V4
		} else {
			n.Family = netlink.FAMILY_V6
		}
		if err := b.nh.NeighSet(n); err != nil {
			b.log.Debug("l2lb: asking to resolve", "backend", a, "err", err)
		}
	}
	return len(missing)
}

// Sync waits until the balancer serves, every service's maps reflect its
// pool's current snapshot and every ready backend's MAC is known. It
// returns an error wrapping [ErrUnresolved] (naming the backends) or
// ctx.Err() when ctx ends first, and [ErrServerClosed] once the balancer
// stopped.
func (b *Balancer) Sync(ctx context.Context) error {
	select {
	case <-b.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	poked := false
	for {
		b.mu.Lock()
		if b.state != serving {
			b.mu.Unlock()
			return ErrServerClosed
		}
		var pending []string
		current := true
		for _, s := range b.services {
			snap := s.svc.Pool.Snapshot()
			if snap != s.snap || s.dirty {
				current = false
			}
			for _, w := range snap.Ready {
				if m := s.members[w.Endpoint.Addr()]; m == nil || !m.inRing {
					pending = append(pending, w.Endpoint.Addr().String())
				}
			}
		}
		wait := b.applied
		b.mu.Unlock()
		if current && len(pending) == 0 {
			return nil
		}
		if !current && !poked {
			// Once: a failed apply is retried by the loop at its next
			// tick, not in a busy loop with this one.
			b.poke()
			poked = true
		}
		select {
		case <-wait:
		case <-ctx.Done():
			if len(pending) > 0 {
				return fmt.Errorf("%w: %v: %w", ErrUnresolved, pending, ctx.Err())
			}
			return ctx.Err()
		}
	}
}

// Mode returns the attach mode in use, driver or generic, once Serve
// attached the program; AttachAuto before.
func (b *Balancer) Mode() AttachMode {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mode
}

// Stats reads the data plane's counters (all zero before Serve). It does
// not block on the control loop beyond a map read per counter.
func (b *Balancer) Stats() (Stats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stopped {
		return Stats{}, ErrServerClosed
	}
	c, err := b.dp.counters()
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Mode: b.mode, Counters: c}
	for _, s := range b.services {
		t, err := b.dp.serviceTraffic(s.id)
		if err != nil {
			return Stats{}, err
		}
		ss := ServiceStats{VIP: s.svc.VIP, Proto: s.svc.Proto, Traffic: t}
		for _, addr := range s.order {
			m := s.members[addr]
			if m == nil {
				continue
			}
			bt, err := b.dp.backendTraffic(m.id)
			if err != nil {
				return Stats{}, err
			}
			bs := BackendStats{Addr: addr, Up: m.up, InRing: m.inRing, Traffic: bt}
			if m.mac != ([6]byte{}) {
				bs.MAC = net.HardwareAddr(slices.Clone(m.mac[:]))
			}
			ss.Backends = append(ss.Backends, bs)
		}
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// ConnTable reads the connection table's fill: how many flows it holds
// against its size. It walks the whole table (a few milliseconds for the
// default 65536 entries), so call it for monitoring, not per packet
// count. With Counters.ConnLost it tells whether Config.ConnTableSize
// fits the traffic.
func (b *Balancer) ConnTable() (ConnTableStats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stopped {
		return ConnTableStats{}, ErrServerClosed
	}
	n, err := b.dp.connEntries()
	if err != nil {
		return ConnTableStats{}, err
	}
	return ConnTableStats{Size: b.cfg.ConnTableSize, Entries: n}, nil
}
