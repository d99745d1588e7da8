package l2lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// Balancer is a running layer-2 balancer: the XDP program attached to an
// interface and the control loop that keeps its maps in step with the
// services' pools and the neighbour table.
//
// The control loop applies a pool's new snapshot (health, drain, weight,
// membership) as soon as the pool publishes it, so a health event takes
// effect within one health-check interval. It writes a backend that
// becomes ready into the backends map before the ring, and takes a failed
// one out of the ring before marking it down, so the ring never names a
// backend the program would refuse.
//
// All methods are safe for concurrent use.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	dp      *dataplane
	xdp     link.Link
	mode    AttachMode
	ifindex int
	mac     [6]byte
	nh      *netlink.Handle

	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}
	once   sync.Once

	mu       sync.Mutex
	closed   bool
	services []*serviceState
	neigh    map[netip.Addr][6]byte   // last known MAC of each backend host
	asked    map[netip.Addr]time.Time // when resolution was last requested
	applied  chan struct{}            // closed after each pass of the loop
	nextID   uint32
	freeIDs  []uint32 // FIFO: a freed id is reused as late as possible
}

type serviceState struct {
	id      uint32
	svc     Service
	snap    *balancer.Snapshot // last applied
	table   *maglev.Table      // last written; nil: all slots 0
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

// New loads the XDP program, fills its maps from the services' pools and
// attaches it to the interface, then starts the control loop. The
// interface, the netlink handle and the attachment live in the network
// namespace of the calling thread: to run a balancer in another namespace,
// call New from a thread switched into it (as netlab's Host.Do does); the
// balancer keeps working from any goroutine afterwards.
//
// New needs root (CAP_BPF, CAP_NET_ADMIN). It returns once the program is
// attached, without waiting for backend MACs: call [Balancer.Sync] for
// that. Close the balancer to detach it.
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
	dp, err := loadDataplane(cfg.MaxServices, cfg.MaxBackends, cfg.ConnTableSize)
	if err != nil {
		nh.Close()
		return nil, err
	}
	b := &Balancer{
		cfg:     cfg,
		log:     log.With("interface", l.Attrs().Name),
		dp:      dp,
		ifindex: l.Attrs().Index,
		mac:     [6]byte(hw),
		nh:      nh,
		kick:    make(chan struct{}, 1),
		neigh:   make(map[netip.Addr][6]byte),
		asked:   make(map[netip.Addr]time.Time),
		applied: make(chan struct{}),
		nextID:  1, // 0 is reserved: never up
	}
	for i, s := range cfg.Services {
		b.services = append(b.services, &serviceState{
			id: uint32(i), svc: s, members: make(map[netip.AddrPort]*member), dirty: true,
		})
	}
	fail := func(err error) (*Balancer, error) {
		dp.Close()
		nh.Close()
		return nil, err
	}
	if err := dp.setConfig(b.mac); err != nil {
		return fail(err)
	}
	b.refreshNeighbours()
	b.mu.Lock()
	for _, s := range b.services {
		if err := b.applyLocked(s); err != nil {
			b.mu.Unlock()
			return fail(err)
		}
		if err := dp.setService(VIP{s.svc.VIP, s.svc.Proto}, s.id); err != nil {
			b.mu.Unlock()
			return fail(err)
		}
	}
	b.mu.Unlock()
	b.resolveMissing()

	if b.xdp, b.mode, err = attach(dp, b.ifindex, cfg.Mode); err != nil {
		return fail(err)
	}
	b.log.Info("l2lb: attached", "mode", b.mode, "services", len(cfg.Services))

	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	for _, s := range b.services {
		b.wg.Add(1)
		go b.watch(ctx, s.svc.Pool)
	}
	b.wg.Add(1)
	go b.loop(ctx)
	return b, nil
}

// attach attaches the program in mode, falling back from driver to
// generic for AttachAuto.
func attach(dp *dataplane, ifindex int, mode AttachMode) (link.Link, AttachMode, error) {
	try := func(m AttachMode) (link.Link, error) {
		flags := link.XDPDriverMode
		if m == AttachGeneric {
			flags = link.XDPGenericMode
		}
		return link.AttachXDP(link.XDPOptions{Program: dp.objs.L2lbXdp, Interface: ifindex, Flags: flags})
	}
	switch mode {
	case AttachAuto:
		l, err := try(AttachDriver)
		if err == nil {
			return l, AttachDriver, nil
		}
		l, gerr := try(AttachGeneric)
		if gerr != nil {
			return nil, 0, fmt.Errorf("l2lb: attach XDP: driver mode: %v; generic mode: %w", err, gerr)
		}
		return l, AttachGeneric, nil
	default:
		l, err := try(mode)
		if err != nil {
			return nil, 0, fmt.Errorf("l2lb: attach XDP in %s mode: %w", mode, err)
		}
		return l, mode, nil
	}
}

// watch kicks the loop whenever pool publishes a new snapshot.
func (b *Balancer) watch(ctx context.Context, pool *balancer.Pool) {
	defer b.wg.Done()
	for {
		select {
		case <-pool.Snapshot().Changed():
			b.poke()
		case <-ctx.Done():
			return
		}
	}
}

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
			b.log.Error("l2lb: apply failed; retrying", "service", s.svc.VIP, "err", err)
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
	eps := s.svc.Pool.Endpoints()
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
		mac, resolved := b.neigh[addr.Addr().Unmap()]
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
		if s.table != nil {
			if err := b.dp.setSlots(s.id, allSlotsList(), make([]uint32, RingSize)); err != nil {
				return err
			}
			s.table = nil
		}
	} else if s.table == nil || !slices.Equal(ringIDs, s.ringIDs) || !slices.Equal(ringW, s.ringW) {
		t, err := maglev.NewTable(ringIDs, ringW, RingSize)
		if err != nil {
			return fmt.Errorf("l2lb: service %v: %w", s.svc.VIP, err)
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
			b.log.Debug("l2lb: ring updated", "service", s.svc.VIP, "slots", len(slots), "backends", len(ringIDs))
		}
		s.table, s.ringIDs, s.ringW = t, ringIDs, ringW
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
		for _, ep := range s.svc.Pool.Endpoints() {
			a := ep.Addr().Addr().Unmap()
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

// Sync waits until every service's maps reflect its pool's current
// snapshot and every ready backend's MAC is known. It returns an error
// wrapping [ErrUnresolved] (naming the backends) or ctx.Err() when ctx
// ends first, and [ErrClosed] after Close.
func (b *Balancer) Sync(ctx context.Context) error {
	poked := false
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return ErrClosed
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

// Mode returns the attach mode in use: driver or generic.
func (b *Balancer) Mode() AttachMode { return b.mode }

// Stats reads the data plane's counters. It does not block on the
// control loop beyond a map read per counter.
func (b *Balancer) Stats() (Stats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Stats{}, ErrClosed
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

// Close stops the control loop, detaches the program and frees its maps.
// Established flows then reach the balancer's own stack. Close is
// idempotent.
func (b *Balancer) Close() error {
	var err error
	b.once.Do(func() {
		b.cancel()
		b.wg.Wait()
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		err = errors.Join(b.xdp.Close(), b.dp.Close())
		b.nh.Close()
	})
	return err
}
