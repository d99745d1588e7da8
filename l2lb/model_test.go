package l2lb

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// FuzzParseFlow builds a frame from fuzzed flow fields and requires
// ParseFlow to give the flow back, and every cut of the frame to parse or
// be refused without a panic.
func FuzzParseFlow(f *testing.F) {
	f.Add([]byte{198, 18, 0, 1}, []byte{198, 18, 0, 100}, uint16(40000), uint16(80), true, byte(tcpSYN), 10)
	f.Add(cli6.AsSlice(), vip6.Addr().AsSlice(), uint16(1), uint16(53), false, byte(0), 0)
	f.Fuzz(func(t *testing.T, src, dst []byte, sport, dport uint16, tcp bool, flags byte, cut int) {
		s, ok1 := netip.AddrFromSlice(src)
		d, ok2 := netip.AddrFromSlice(dst)
		if !ok1 || !ok2 || s.Is4() != d.Is4() || s.Is4In6() || d.Is4In6() {
			return
		}
		want := Flow{Proto: UDP, Src: netip.AddrPortFrom(s, sport), Dst: netip.AddrPortFrom(d, dport)}
		if tcp {
			want.Proto = TCP
			want.SYN = flags&(tcpSYN|tcpACK) == tcpSYN
		}
		fr := frame(want, flags, []byte("payload"))
		got, ok := ParseFlow(fr)
		require.True(t, ok)
		require.Equal(t, want, got)
		if cut >= 0 && cut < len(fr) {
			ParseFlow(fr[:cut])
		}
	})
}

func TestFlowHash(t *testing.T) {
	f := Flow{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.1:40000"), Dst: vip4}
	h := FlowHash(f)
	g := f
	g.SYN = true
	assert.Equal(t, h, FlowHash(g), "SYN is not part of the flow")
	for _, other := range []Flow{
		{Proto: UDP, Src: f.Src, Dst: f.Dst},
		{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.1:40001"), Dst: f.Dst},
		{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.2:40000"), Dst: f.Dst},
		{Proto: TCP, Src: f.Src, Dst: netip.MustParseAddrPort("198.18.0.100:81")},
		{Proto: TCP, Src: f.Dst, Dst: f.Src},
		{Proto: TCP, Src: netip.MustParseAddrPort("[::ffff:198.18.0.1]:40000"), Dst: netip.MustParseAddrPort("[::ffff:198.18.0.100]:80")},
	} {
		assert.NotEqual(t, h, FlowHash(other), "%+v", other)
	}
	assert.Zero(t, testing.AllocsPerRun(100, func() { FlowHash(f) }))
}

// TestModelMatchesMaglevPicker: a ring filled from the same Maglev table a
// pool's maglev.Builder builds sends each flow where the Go picker sends
// its FlowHash, so kernel and user-space data planes agree.
func TestModelMatchesMaglevPicker(t *testing.T) {
	var bs []balancer.Backend
	for i := range 5 {
		bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 80), Weight: uint32(1 + i%2)})
	}
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	require.NoError(t, pool.Set(bs))
	snap := pool.Snapshot()
	tbl := snap.Picker.(*maglev.Picker).Table()

	m := NewModel(balancerMAC)
	v := VIP{vip4, TCP}
	m.SetService(v, 0)
	idOf := map[uint64]uint32{}
	for i, b := range bs {
		idOf[balancer.HashAddrPort(b.Addr)] = uint32(i + 1)
		m.SetBackend(uint32(i+1), BackendEntry{MAC: macOf(uint32(i + 1)), Up: true})
	}
	slots := tbl.Diff(nil)
	ids := make([]uint32, len(slots))
	for i, s := range slots {
		ids[i] = idOf[tbl.SlotID(s)]
	}
	m.SetSlots(0, slots, ids)
	for i := range 2000 {
		f := Flow{Proto: TCP, SYN: true, Src: netip.AddrPortFrom(client, uint16(i)), Dst: vip4}
		d := m.Decide(f, 60)
		ep, err := pool.Pick(balancer.WithKey(FlowHash(f)))
		require.NoError(t, err)
		require.Equal(t, idOf[balancer.HashAddrPort(ep.Addr())], d.Backend, "flow %d", i)
	}
}

// The model answers "where does this flow go" without a kernel: here a
// service with two backends, one of which fails after a connection began.
func ExampleModel() {
	m := NewModel([6]byte{0x02, 0, 0, 0, 0, 0xb0})
	vip := netip.MustParseAddrPort("198.18.0.100:80")
	m.SetService(VIP{vip, TCP}, 0)
	m.SetBackend(1, BackendEntry{MAC: [6]byte{0x02, 0, 0, 0, 0, 1}, Up: true})
	m.SetBackend(2, BackendEntry{MAC: [6]byte{0x02, 0, 0, 0, 0, 2}, Up: true})
	tbl, _ := maglev.NewTable([]uint64{1, 2}, nil, RingSize)
	slots := tbl.Diff(nil)
	ids := make([]uint32, len(slots))
	for i, s := range slots {
		ids[i] = uint32(tbl.SlotID(s))
	}
	m.SetSlots(0, slots, ids)

	f := Flow{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.1:40000"), Dst: vip, SYN: true}
	d := m.Decide(f, 74)
	fmt.Println(d.Verdict, "to backend", d.Backend)
	f.SYN = false
	d = m.Decide(f, 66)
	fmt.Println(d.Verdict, "to backend", d.Backend, "cache hit:", d.Cache == CacheHit)

	// The backend fails: the next segment is picked again, from the ring
	// the control plane rewrote without it.
	failed := d.Backend
	m.SetBackend(failed, BackendEntry{MAC: [6]byte{0x02, 0, 0, 0, 0, byte(failed)}, Up: false})
	tbl2, _ := maglev.NewTable([]uint64{uint64(3 - failed)}, nil, RingSize)
	slots = tbl2.Diff(tbl)
	ids = ids[:0]
	for _, s := range slots {
		ids = append(ids, uint32(tbl2.SlotID(s)))
	}
	m.SetSlots(0, slots, ids)
	d = m.Decide(f, 66)
	fmt.Println(d.Verdict, "moved:", d.Backend != failed, "repicked:", d.Cache == CacheRepick)
	fmt.Printf("%+v\n", m.Counters)
	// Output:
	// XDP_TX to backend 2
	// XDP_TX to backend 2 cache hit: true
	// XDP_TX moved: true repicked: true
	// {Passed:0 Dropped:0 NoBackend:0 Forwarded:3 ConnHits:1 ConnMisses:1 ConnRepicks:1 ConnLost:0}
}
