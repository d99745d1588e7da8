package l2lb

import (
	"errors"
	"log/slog"
	"net/netip"
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
