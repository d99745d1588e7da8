package iplb

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// planOf returns the plan iplb would write for pool's current snapshot.
func planOf(t *testing.T, s *service) plan {
	t.Helper()
	p, err := s.planFor(s.pool.Snapshot())
	require.NoError(t, err)
	return p
}

func testService(t *testing.T, n, size int, weight func(i int) uint32) (*service, []netip.AddrPort) {
	t.Helper()
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}})
	var addrs []netip.AddrPort
	for i := range n {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(2 + i/250), byte(1 + i%250)}), 8080)
		addrs = append(addrs, a)
		require.NoError(t, pool.Add(balancer.Backend{Addr: a, Weight: weight(i)}))
	}
	svc := Service{Name: "s", VIP: netip.MustParseAddrPort("198.19.0.10:80"), TableSize: size, Pool: pool}
	require.NoError(t, svc.validate())
	return &service{svc: svc, pool: pool}, addrs
}

func TestSlotsFollowWeights(t *testing.T) {
	for _, tc := range []struct {
		n, size int
		weight  func(int) uint32
	}{
		{3, 251, func(i int) uint32 { return []uint32{1, 1, 2}[i] }},
		{10, 1021, func(i int) uint32 { return uint32(1 + i%3) }},
		{100, 4093, func(int) uint32 { return 1 }},
	} {
		t.Run(fmt.Sprintf("n=%d/size=%d", tc.n, tc.size), func(t *testing.T) {
			s, addrs := testService(t, tc.n, tc.size, tc.weight)
			p := planOf(t, s)
			require.Equal(t, tc.size, p.size)
			var wsum float64
			for i := range addrs {
				wsum += float64(tc.weight(i))
			}
			counts := p.table.Counts()
			for i, id := range p.table.IDs() {
				addr := p.ids[id]
				j := indexOf(addrs, addr)
				want := float64(tc.size) * float64(tc.weight(j)) / wsum
				assert.InDelta(t, want, float64(counts[i]), want*0.1+1, "%v", addr)
			}
		})
	}
}

func indexOf(addrs []netip.AddrPort, a netip.AddrPort) int {
	for i, b := range addrs {
		if a == b {
			return i
		}
	}
	return -1
}

func TestSlotsMoveMinimally(t *testing.T) {
	// Automatic size: 4093 slots for 20 backends.
	s, addrs := testService(t, 20, 0, func(int) uint32 { return 1 })
	before := planOf(t, s)
	owned := func(p plan, a netip.AddrPort) map[int]bool {
		m := map[int]bool{}
		for i := range p.size {
			if p.ids[p.table.SlotID(i)] == a {
				m[i] = true
			}
		}
		return m
	}

	t.Run("remove", func(t *testing.T) {
		gone := addrs[7]
		require.True(t, s.pool.SetHealthy(gone, false))
		after := planOf(t, s)
		diff := after.table.Diff(before.table)
		mine := owned(before, gone)
		for slot := range mine {
			assert.Contains(t, diff, slot, "every slot of the removed backend moves")
		}
		assert.LessOrEqual(t, float64(len(diff)), 1.4*float64(len(mine))+2, "only about its share moves: %d of %d", len(diff), len(mine))
		require.True(t, s.pool.SetHealthy(gone, true))
	})

	t.Run("add", func(t *testing.T) {
		extra := netip.MustParseAddrPort("198.18.9.9:8080")
		require.NoError(t, s.pool.Add(balancer.Backend{Addr: extra}))
		after := planOf(t, s)
		require.Equal(t, before.size, after.size)
		diff := after.table.Diff(before.table)
		mine := owned(after, extra)
		assert.LessOrEqual(t, float64(len(diff)), 1.4*float64(len(mine))+2, "only the new backend's share moves: %d of %d", len(diff), len(mine))
	})

	t.Run("weight", func(t *testing.T) {
		require.NoError(t, s.pool.Add(balancer.Backend{Addr: addrs[0], Weight: 2}))
		after := planOf(t, s)
		assert.Greater(t, len(owned(after, addrs[0])), len(owned(before, addrs[0]))*3/2, "a doubled weight about doubles the slots")
	})
}

func TestAutoSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 251}, {2, 251}, {3, 1021}, {10, 1021}, {11, 4093}, {40, 4093}, {41, 16381}, {163, 16381}, {164, 65521}, {1000, 65521},
	} {
		assert.Equal(t, tc.want, autoSize(tc.n), "n=%d", tc.n)
	}
	for _, s := range tableSizes {
		assert.True(t, isPrime(s), "%d", s)
	}
}
