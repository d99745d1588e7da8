package l2lb

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// newApplier returns a Balancer with a loaded data plane but no interface
// and no control loop, to drive applyLocked by hand.
func newApplier(t *testing.T, maxBackends int, pools ...*balancer.Pool) *Balancer {
	t.Helper()
	requireRoot(t)
	dp, err := loadDataplane(4, maxBackends, 1024)
	require.NoError(t, err)
	t.Cleanup(func() { dp.Close() })
	require.NoError(t, dp.setConfig(balancerMAC))
	b := &Balancer{
		cfg:     Config{MaxBackends: maxBackends},
		log:     slog.New(slog.DiscardHandler),
		dp:      dp,
		neigh:   make(map[netip.Addr][6]byte),
		badMAC:  make(map[netip.AddrPort]string),
		applied: make(chan struct{}),
		nextID:  1,
	}
	for i, p := range pools {
		v := VIP{netip.AddrPortFrom(vip4.Addr(), uint16(80+i)), TCP}
		b.services = append(b.services, &serviceState{id: uint32(i), svc: Service{VIP: v.Addr, Proto: TCP, Pool: p},
			members: make(map[netip.AddrPort]*member), dirty: true})
		require.NoError(t, dp.setService(v, uint32(i)))
	}
	return b
}

func (b *Balancer) applyT(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.services {
		require.NoError(t, b.applyLocked(s))
	}
}

// ringOwners reads service s's ring and returns the address owning each
// slot ("" for id 0).
func (b *Balancer) ringOwners(t *testing.T, s int) []netip.AddrPort {
	t.Helper()
	byID := map[uint32]netip.AddrPort{}
	for addr, m := range b.services[s].members {
		byID[m.id] = addr
	}
	out := make([]netip.AddrPort, RingSize)
	for slot, id := range readRing(t, b.dp, uint32(s)) {
		out[slot] = byID[id]
	}
	return out
}

func backendAddrs(n int) []balancer.Backend {
	var bs []balancer.Backend
	for i := range n {
		bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 80)})
	}
	return bs
}

func TestApply(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	bs := backendAddrs(3)
	require.NoError(t, pool.Set(bs))
	b := newApplier(t, 5, pool)
	s := b.services[0]
	mac := func(i int) [6]byte { return [6]byte{2, 0, 0, 0, 1, byte(i)} }

	owners := func() map[netip.AddrPort]int {
		c := map[netip.AddrPort]int{}
		for _, a := range b.ringOwners(t, 0) {
			c[a]++
		}
		return c
	}
	entry := func(addr netip.AddrPort) l2lbBackend {
		var e l2lbBackend
		require.NoError(t, b.dp.objs.Backends.Lookup(s.members[addr].id, &e))
		return e
	}

	t.Run("no MAC known: nothing in the ring", func(t *testing.T) {
		b.applyT(t)
		assert.Equal(t, map[netip.AddrPort]int{{}: RingSize}, owners())
		in := frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1), Dst: vip4}, tcpSYN, nil)
		opts := runOpts(in)
		v, err := b.dp.objs.L2lbXdp.Run(opts)
		require.NoError(t, err)
		assert.Equal(t, Drop, Verdict(v))
	})

	t.Run("MACs resolved: backends enter the ring", func(t *testing.T) {
		b.neigh[bs[0].Addr.Addr()], b.neigh[bs[1].Addr.Addr()] = mac(0), mac(1)
		s.dirty = true
		b.applyT(t)
		c := owners()
		assert.Len(t, c, 2)
		assert.NotZero(t, c[bs[0].Addr])
		assert.NotZero(t, c[bs[1].Addr])
		assert.Equal(t, mac(1), entry(bs[1].Addr).Mac)
		assert.Equal(t, uint16(1), entry(bs[1].Addr).Flags)
		assert.Zero(t, entry(bs[2].Addr).Flags, "unresolved: down")

		b.neigh[bs[2].Addr.Addr()] = mac(2)
		s.dirty = true
		b.applyT(t)
		assert.Len(t, owners(), 3)
	})

	t.Run("the ring equals the pool's Maglev table", func(t *testing.T) {
		tbl := pool.Snapshot().Picker.(*maglev.Picker).Table()
		got := b.ringOwners(t, 0)
		for slot := range RingSize {
			require.Equal(t, balancer.HashAddrPort(got[slot]), tbl.SlotID(slot), "slot %d", slot)
		}
	})

	t.Run("drain keeps the backend up, out of the ring; failure marks it down", func(t *testing.T) {
		pool.SetDraining(bs[0].Addr, true)
		pool.SetHealthy(bs[1].Addr, false)
		b.applyT(t)
		c := owners()
		assert.Zero(t, c[bs[0].Addr])
		assert.Zero(t, c[bs[1].Addr])
		assert.Equal(t, RingSize, c[bs[2].Addr])
		assert.Equal(t, uint16(1), entry(bs[0].Addr).Flags, "draining: up")
		assert.Zero(t, entry(bs[1].Addr).Flags, "failed: down")
		pool.SetDraining(bs[0].Addr, false)
		pool.SetHealthy(bs[1].Addr, true)
		b.applyT(t)
		assert.Len(t, owners(), 3)
	})

	t.Run("removed members free their ids; reused ids start with zero counters", func(t *testing.T) {
		gone := s.members[bs[0].Addr].id
		// Traffic to the backend about to leave.
		require.NoError(t, b.dp.objs.BackendStats.Update(gone, make([]l2lbCounters, b.dp.ncpu), 0))
		per := make([]l2lbCounters, b.dp.ncpu)
		per[0] = l2lbCounters{Packets: 7, Bytes: 700}
		require.NoError(t, b.dp.objs.BackendStats.Update(gone, per, 0))

		require.True(t, pool.Remove(bs[0].Addr))
		b.applyT(t)
		var e l2lbBackend
		require.NoError(t, b.dp.objs.Backends.Lookup(gone, &e))
		assert.Equal(t, l2lbBackend{}, e, "the freed id's entry is cleared")
		assert.Equal(t, []uint32{gone}, b.freeIDs)

		// Ids 1-3 were given out; 4 is fresh and goes first, then the
		// freed one (MaxBackends 5: ids 1-4).
		more := backendAddrs(5)[3:]
		for _, m := range more {
			b.neigh[m.Addr.Addr()] = mac(9)
			require.NoError(t, pool.Add(m))
		}
		b.applyT(t)
		assert.Equal(t, uint32(4), s.members[more[0].Addr].id)
		assert.Equal(t, gone, s.members[more[1].Addr].id, "the freed id is reused last")
		tr, err := b.dp.backendTraffic(gone)
		require.NoError(t, err)
		assert.Zero(t, tr, "counters reset on reuse")
		assert.Len(t, owners(), 4)

		require.NoError(t, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.99:80")}))
		b.mu.Lock()
		err = b.applyLocked(s)
		b.mu.Unlock()
		assert.ErrorContains(t, err, "out of backend ids")
	})
}

func runOpts(in []byte) *ebpf.RunOptions {
	return &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
}

// readRing reads service's ring slots in batches.
func readRing(tb testing.TB, dp *dataplane, service uint32) []uint32 {
	tb.Helper()
	keys, vals := make([]uint32, 8192), make([]uint32, 8192)
	out := make([]uint32, RingSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := dp.objs.Rings.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if keys[i]/RingSize == service {
				out[keys[i]%RingSize] = vals[i]
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out
		}
		require.NoError(tb, err)
	}
}

// TestApplyRingDelta checks the "ring written as a delta" promise: a
// health change of one backend of ten writes only the slots it owned,
// and a weight change only the slots that move, never the whole ring.
// A full rewrite would write RingSize slots and fail here.
func TestApplyRingDelta(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	bs := backendAddrs(10)
	for i := range bs {
		mac := macOf(uint32(i + 1))
		bs[i].Meta = map[string]string{MetaMAC: net.HardwareAddr(mac[:]).String()}
	}
	require.NoError(t, pool.Set(bs))
	b := newApplier(t, 64, pool)
	b.applyT(t)
	require.Equal(t, uint64(RingSize), b.dp.slotWrites, "the first table is written whole")

	check := func(what string) {
		t.Helper()
		tbl := pool.Snapshot().Picker.(*maglev.Picker).Table()
		want, got := make([]uint64, RingSize), make([]uint64, RingSize)
		for slot, a := range b.ringOwners(t, 0) {
			want[slot], got[slot] = tbl.SlotID(slot), balancer.HashAddrPort(a)
		}
		require.True(t, slices.Equal(want, got), "%s: the ring is the pool's Maglev table", what)
	}
	check("initial")
	steps := []struct {
		what   string
		change func()
	}{
		{"a backend fails", func() { pool.SetHealthy(bs[3].Addr, false) }},
		{"it recovers", func() { pool.SetHealthy(bs[3].Addr, true) }},
		{"a weight doubles", func() { pool.SetWeight(bs[5].Addr, 2) }},
		{"a member leaves", func() { pool.Remove(bs[7].Addr) }},
	}
	for _, st := range steps {
		before := b.services[0].table
		st.change()
		want := len(pool.Snapshot().Picker.(*maglev.Picker).Table().Diff(before))
		w0 := b.dp.slotWrites
		b.applyT(t)
		wrote := b.dp.slotWrites - w0
		assert.Equal(t, uint64(want), wrote, "%s: only the changed slots", st.what)
		assert.Less(t, wrote, uint64(RingSize/4), "%s: a delta, not the ring", st.what)
		check(st.what)
	}
	w0 := b.dp.slotWrites
	pool.SetDraining(bs[0].Addr, true)
	pool.SetDraining(bs[0].Addr, false)
	b.applyT(t)
	assert.Equal(t, w0, b.dp.slotWrites, "the same ready set writes nothing")
}

// TestApplyMetaMAC takes a backend's MAC from its member metadata, over
// the neighbour table, and keeps a member whose metadata does not parse
// out of traffic.
func TestApplyMetaMAC(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	bs := backendAddrs(3)
	bs[0].Meta = map[string]string{MetaMAC: "02:00:5e:00:53:01"}
	bs[1].Meta = map[string]string{MetaMAC: "not-a-mac"}
	require.NoError(t, pool.Set(bs))
	b := newApplier(t, 8, pool)
	b.neigh[bs[0].Addr.Addr()] = [6]byte{2, 9, 9, 9, 9, 9} // metadata wins
	b.neigh[bs[2].Addr.Addr()] = [6]byte{2, 0, 0, 0, 0, 3}
	b.applyT(t)
	entry := func(addr netip.AddrPort) l2lbBackend {
		var e l2lbBackend
		require.NoError(t, b.dp.objs.Backends.Lookup(b.services[0].members[addr].id, &e))
		return e
	}
	assert.Equal(t, [6]byte{2, 0, 0x5e, 0, 0x53, 1}, entry(bs[0].Addr).Mac)
	assert.Equal(t, uint16(1), entry(bs[0].Addr).Flags)
	assert.Zero(t, entry(bs[1].Addr).Flags, "unparsable metadata: no traffic")
	assert.Equal(t, [6]byte{2, 0, 0, 0, 0, 3}, entry(bs[2].Addr).Mac, "no metadata: the neighbour table")

	// Changed metadata reaches the map with the pool's next snapshot.
	bs[1].Meta = map[string]string{MetaMAC: "02:00:5e:00:53:02"}
	require.NoError(t, pool.Set(bs))
	b.applyT(t)
	assert.Equal(t, [6]byte{2, 0, 0x5e, 0, 0x53, 2}, entry(bs[1].Addr).Mac)
	assert.Equal(t, uint16(1), entry(bs[1].Addr).Flags)
	owners := map[netip.AddrPort]bool{}
	for _, a := range b.ringOwners(t, 0) {
		owners[a] = true
	}
	assert.Len(t, owners, 3)
}

// TestChangeReusesServiceIDs removes a service and adds another that
// takes its id: the new service must not inherit the old one's ring,
// key or counters, and the VIP table must name the new VIP only.
func TestChangeReusesServiceIDs(t *testing.T) {
	macPool := func(n int, first byte) *balancer.Pool {
		p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
		t.Cleanup(func() { p.Close() })
		var bs []balancer.Backend
		for i := range n {
			a := netip.AddrFrom4([4]byte{198, 18, 9, first + byte(i)})
			bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(a, 80),
				Meta: map[string]string{MetaMAC: net.HardwareAddr{2, 0, 0, 0, 9, first + byte(i)}.String()}})
		}
		require.NoError(t, p.Set(bs))
		return p
	}
	pa, pb, pc := macPool(3, 10), macPool(2, 20), macPool(2, 30)
	b := newApplier(t, 32)
	b.cfg.MaxServices = 2
	ctx, cancel := context.WithCancel(context.Background())
	b.lctx, b.state, b.kick = ctx, serving, make(chan struct{}, 1)
	t.Cleanup(func() {
		cancel()
		b.wg.Wait()
	})
	vipA, vipB, vipC := netip.MustParseAddrPort("198.18.0.100:80"), netip.MustParseAddrPort("198.18.0.100:81"), netip.MustParseAddrPort("198.18.0.100:82")
	require.NoError(t, b.SetServices([]Service{
		{VIP: vipA, Pool: pa, Key: balancer.MustParseKey("client")},
		{VIP: vipB, Pool: pb},
	}))
	run := func(dst netip.AddrPort, port uint16) (Verdict, []byte) {
		in := frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, port), Dst: dst}, tcpSYN, nil)
		opts := runOpts(in)
		v, err := b.dp.objs.L2lbXdp.Run(opts)
		require.NoError(t, err)
		return Verdict(v), opts.DataOut
	}
	for p := range uint16(20) {
		v, _ := run(vipA, 1000+p)
		require.Equal(t, TX, v)
	}
	idA := b.services[0].id

	// A goes; C, with no ready backend yet, takes A's id.
	for _, bs := range pc.Snapshot().Members {
		pc.SetHealthy(bs.Addr(), false)
	}
	require.NoError(t, b.SetServices([]Service{{VIP: vipB, Pool: pb}, {VIP: vipC, Pool: pc}}),
		"one id free only once A is out: A goes first")
	sc := b.services[1]
	require.Equal(t, idA, sc.id, "the freed id is reused")
	v, _ := run(vipA, 1000)
	assert.Equal(t, Pass, v, "the removed VIP is no service")
	v, _ = run(vipC, 1000)
	assert.Equal(t, Drop, v, "C has no backend: A's ring must not serve it")
	tr, err := b.dp.serviceTraffic(sc.id)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), tr.Packets, "counters restart with the new service")
	var conf l2lbService
	require.NoError(t, b.dp.objs.ServiceConf.Lookup(sc.id, &conf))
	assert.Zero(t, conf.Flags, "C hashes the 5-tuple, not A's client key")
	for _, id := range readRing(t, b.dp, sc.id) {
		require.Zero(t, id, "no slot names one of A's backends")
	}

	for _, bs := range pc.Snapshot().Members {
		pc.SetHealthy(bs.Addr(), true)
	}
	b.applyT(t)
	v, out := run(vipC, 1000)
	assert.Equal(t, TX, v)
	assert.Equal(t, []byte{2, 0, 0, 0, 9}, out[0:5], "to one of C's backends")
	assert.GreaterOrEqual(t, out[5], byte(30))

	// Both ids in use: replacing both services at once takes the old
	// ones out first, then reuses their ids.
	vipD := netip.MustParseAddrPort("198.18.0.100:83")
	require.NoError(t, b.SetServices([]Service{{VIP: vipA, Pool: pa}, {VIP: vipD, Pool: pb}}))
	assert.Len(t, b.Services(), 2)
	for _, dst := range []netip.AddrPort{vipB, vipC} {
		v, _ = run(dst, 1000)
		assert.Equal(t, Pass, v, "%v was removed", dst)
	}
	for _, dst := range []netip.AddrPort{vipA, vipD} {
		v, _ = run(dst, 1000)
		assert.Equal(t, TX, v, "%v was added", dst)
	}
	assert.ErrorContains(t, b.AddService(Service{VIP: vipB, Pool: pb}), "MaxServices is 2")
}

// TestChangeConcurrent changes services, pools and reads stats from
// several goroutines at once (run with -race), then checks that the data
// plane serves exactly the last set.
func TestChangeConcurrent(t *testing.T) {
	pools := make([]*balancer.Pool, 3)
	for i := range pools {
		pools[i] = balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
		t.Cleanup(func() { pools[i].Close() })
		var bs []balancer.Backend
		for j := range 4 {
			a := netip.AddrFrom4([4]byte{198, 18, byte(10 + i), byte(1 + j)})
			bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(a, 80),
				Meta: map[string]string{MetaMAC: net.HardwareAddr{2, 0, 0, byte(i), 0, byte(j)}.String()}})
		}
		require.NoError(t, pools[i].Set(bs))
	}
	b := newApplier(t, 64)
	b.cfg.MaxServices = 4
	ctx, cancel := context.WithCancel(context.Background())
	b.lctx, b.state, b.kick = ctx, serving, make(chan struct{}, 1)
	t.Cleanup(func() {
		cancel()
		b.wg.Wait()
	})
	vip := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("198.18.0.100"), port) }
	sets := [][]Service{
		{{VIP: vip(80), Pool: pools[0]}, {VIP: vip(81), Pool: pools[1]}},
		{{VIP: vip(80), Pool: pools[2]}, {VIP: vip(82), Pool: pools[1], Key: balancer.MustParseKey("client")}},
		{{VIP: vip(83), Pool: pools[0]}, {VIP: vip(81), Pool: pools[2]}, {VIP: vip(84), Proto: UDP, Pool: pools[1]}},
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 30 {
			assert.NoError(t, b.SetServices(sets[i%len(sets)]))
		}
	})
	wg.Go(func() {
		for i := range 60 {
			p := pools[i%3]
			m := p.Snapshot().Members[i%4]
			p.SetHealthy(m.Addr(), i%2 == 0)
			p.SetWeight(m.Addr(), uint32(1+i%3))
			b.applyAll()
		}
	})
	wg.Go(func() {
		for range 30 {
			_, err := b.Stats()
			assert.NoError(t, err)
			_, err = b.ConnTable()
			assert.NoError(t, err)
			b.Services()
		}
	})
	wg.Wait()
	last := sets[(30-1)%len(sets)]
	for _, p := range pools {
		for _, m := range p.Snapshot().Members {
			p.SetHealthy(m.Addr(), true)
		}
	}
	b.applyAll()
	require.Len(t, b.Services(), len(last))
	for port := uint16(80); port <= 84; port++ {
		i := slices.IndexFunc(last, func(s Service) bool { return s.VIP.Port() == port })
		proto := TCP
		if i >= 0 && last[i].Proto != 0 {
			proto = last[i].Proto
		}
		in := frame(Flow{Proto: proto, Src: netip.AddrPortFrom(client, 999), Dst: vip(port)}, tcpSYN, nil)
		if proto == UDP {
			in = frame(Flow{Proto: proto, Src: netip.AddrPortFrom(client, 999), Dst: vip(port)}, 0, nil)
		}
		opts := runOpts(in)
		v, err := b.dp.objs.L2lbXdp.Run(opts)
		require.NoError(t, err)
		if i < 0 {
			assert.Equal(t, Pass, Verdict(v), "port %d: no service", port)
			continue
		}
		require.Equal(t, TX, Verdict(v), "port %d", port)
		want := slices.IndexFunc(pools, func(p *balancer.Pool) bool { return p == last[i].Pool })
		assert.Equal(t, byte(want), opts.DataOut[3], "port %d: a backend of the service's pool", port)
	}
}
