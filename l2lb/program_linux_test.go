package l2lb

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("l2lb: loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN); skipping")
	}
}

// twin is the XDP program and the Go model fed the same state, so every
// frame can be run through both and compared.
type twin struct {
	tb testing.TB
	dp *dataplane
	m  *Model
}

func newTwin(tb testing.TB) *twin {
	tb.Helper()
	requireRoot(tb)
	dp, err := loadDataplane(4, 64, 1<<16)
	require.NoError(tb, err)
	tb.Cleanup(func() { dp.Close() })
	require.NoError(tb, dp.setConfig(balancerMAC))
	return &twin{tb: tb, dp: dp, m: NewModel(balancerMAC)}
}

func (tw *twin) service(v VIP, id uint32) {
	require.NoError(tw.tb, tw.dp.setService(v, id))
	tw.m.SetService(v, id)
}

func (tw *twin) key(service uint32, k balancer.Key, v4 bool) {
	require.NoError(tw.tb, tw.dp.setKey(service, k, v4))
	tw.m.SetKey(service, k)
}

func (tw *twin) backend(id uint32, e BackendEntry) {
	require.NoError(tw.tb, tw.dp.setBackend(id, e))
	tw.m.SetBackend(id, e)
}

// ring fills service's ring with a Maglev table over backend ids (the
// table's ids are the backend ids) and returns the table.
func (tw *twin) ring(service uint32, ids []uint32, old *maglev.Table) *maglev.Table {
	mids := make([]uint64, len(ids))
	for i, id := range ids {
		mids[i] = uint64(id)
	}
	t, err := maglev.NewTable(mids, nil, RingSize)
	require.NoError(tw.tb, err)
	slots := t.Diff(old)
	vals := make([]uint32, len(slots))
	for i, s := range slots {
		vals[i] = uint32(t.SlotID(s))
	}
	require.NoError(tw.tb, tw.dp.setSlots(service, slots, vals))
	tw.m.SetSlots(service, slots, vals)
	return t
}

// run runs frame through the program and returns its verdict and output.
func (tw *twin) run(in []byte) (Verdict, []byte) {
	tw.tb.Helper()
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := tw.dp.objs.L2lbXdp.Run(&opts)
	require.NoError(tw.tb, err)
	return Verdict(ret), opts.DataOut
}

// both runs frame through the program and the model, requires the same
// verdict and bytes, and returns the model's decision.
func (tw *twin) both(in []byte) (Decision, []byte) {
	tw.tb.Helper()
	v, out := tw.run(in)
	d, want := tw.m.Process(in)
	require.Equal(tw.tb, d.Verdict, v, "verdict for frame %x", in)
	require.Equal(tw.tb, want, out, "frame out")
	return d, out
}

// fourServices sets up TCP and UDP services on an IPv4 and an IPv6 VIP,
// three backends each (ids 1-3, 4-6, ...).
func fourServices(tw *twin) []VIP {
	vips := []VIP{{vip4, TCP}, {vip6, TCP}, {vip4u, UDP}, {vip6u, UDP}}
	for s, v := range vips {
		sid := uint32(s)
		tw.service(v, sid)
		ids := []uint32{3*sid + 1, 3*sid + 2, 3*sid + 3}
		for _, id := range ids {
			tw.backend(id, BackendEntry{MAC: macOf(id), Up: true, Service: sid})
		}
		tw.ring(sid, ids, nil)
	}
	return vips
}

func TestProgramRewrite(t *testing.T) {
	tw := newTwin(t)
	vips := fourServices(tw)
	payload := []byte("GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
	for s, v := range vips {
		src := client
		if v.Addr.Addr().Is6() {
			src = cli6
		}
		f := Flow{Proto: v.Proto, Src: netip.AddrPortFrom(src, 40000), Dst: v.Addr}
		t.Run(fmt.Sprintf("%s/%s", v.Addr, v.Proto), func(t *testing.T) {
			in := frame(f, tcpSYN, payload)
			orig := bytes.Clone(in)
			v, out := tw.run(in)
			require.Equal(t, TX, v)
			require.Len(t, out, len(orig))
			id := tw.m.rings[uint32(s)][FlowHash(f)%RingSize]
			assert.Equal(t, macOf(id), [6]byte(out[0:6]), "destination MAC is the backend's")
			assert.Equal(t, balancerMAC, [6]byte(out[6:12]), "source MAC is the balancer's")
			assert.Equal(t, orig[12:], out[12:], "the rest of the frame is unchanged")
			assert.Equal(t, uint32(s), tw.m.backends[id].Service)
		})
	}
}

func TestProgramPass(t *testing.T) {
	tw := newTwin(t)
	fourServices(tw)
	tcp := func(src, dst string) []byte {
		return frame(Flow{Proto: TCP, Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}, tcpSYN, nil)
	}
	udp := func(src, dst string) []byte {
		return frame(Flow{Proto: UDP, Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}, 0, nil)
	}
	mod := func(b []byte, f func(b []byte)) []byte { f(b); return b }
	arp := make([]byte, 42)
	copy(arp, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	arp[12], arp[13] = 0x08, 0x06
	cases := []struct {
		name string
		in   []byte
	}{
		{"other address", tcp("198.18.0.1:40000", "198.18.0.101:80")},
		{"other port", tcp("198.18.0.1:40000", "198.18.0.100:81")},
		{"udp to a tcp service", udp("198.18.0.1:40000", "198.18.0.100:80")},
		{"tcp to a udp service", tcp("198.18.0.1:40000", "198.18.0.100:53")},
		{"ipv6 other address", tcp("[2001:db8::1]:40000", "[2001:db8::101]:80")},
		{"ipv4-mapped ipv6 vip", tcp("[::ffff:198.18.0.1]:40000", "[::ffff:198.18.0.100]:80")},
		{"arp", arp},
		{"icmp", ipFrame(client, vip4.Addr(), 1, make([]byte, 8))},
		{"icmpv6", ipFrame(cli6, vip6.Addr(), 58, make([]byte, 8))},
		{"ipv4 first fragment", mod(tcp("198.18.0.1:40000", "198.18.0.100:80"), func(b []byte) { b[20] = 0x20 })},
		{"ipv4 later fragment", mod(tcp("198.18.0.1:40000", "198.18.0.100:80"), func(b []byte) { b[21] = 0x10 })},
		{"ipv6 hop-by-hop header", mod(tcp("[2001:db8::1]:40000", "[2001:db8::100]:80"), func(b []byte) { b[20] = 0 })},
		{"ipv4 header length 16", mod(tcp("198.18.0.1:40000", "198.18.0.100:80"), func(b []byte) { b[14] = 0x44 })},
		{"ipv4 ethertype, version 6", mod(tcp("198.18.0.1:40000", "198.18.0.100:80"), func(b []byte) { b[14] = 0x65 })},
		{"ipv6 ethertype, version 4", mod(tcp("[2001:db8::1]:40000", "[2001:db8::100]:80"), func(b []byte) { b[14] = 0x40 })},
		{"vlan tagged", mod(tcp("198.18.0.1:40000", "198.18.0.100:80"), func(b []byte) { b[12], b[13] = 0x81, 0x00 })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			orig := bytes.Clone(c.in)
			v, out := tw.run(c.in)
			assert.Equal(t, Pass, v)
			assert.Equal(t, orig, out, "passed frames are untouched")
			d, _ := tw.m.Process(c.in)
			assert.Equal(t, Pass, d.Verdict, "the model agrees")
		})
	}
	c, err := tw.dp.counters()
	require.NoError(t, err)
	assert.Equal(t, uint64(len(cases)), c.Passed)
	assert.Equal(t, tw.m.Counters, c)
}

// TestProgramTruncated cuts valid frames at every length from an Ethernet
// header up and corrupts header lengths: the program must never fail, and
// must agree with the model (pass, or forward when the headers it reads
// are whole).
func TestProgramTruncated(t *testing.T) {
	tw := newTwin(t)
	vips := fourServices(tw)
	for _, v := range vips {
		src := client
		if v.Addr.Addr().Is6() {
			src = cli6
		}
		full := frame(Flow{Proto: v.Proto, Src: netip.AddrPortFrom(src, 1234), Dst: v.Addr}, tcpACK, []byte("x"))
		t.Run(fmt.Sprintf("%s/%s", v.Addr, v.Proto), func(t *testing.T) {
			for n := 14; n <= len(full); n++ {
				d, _ := tw.both(bytes.Clone(full[:n]))
				hdr := 14 + 20 + 20
				if v.Addr.Addr().Is6() {
					hdr += 20
				}
				if v.Proto == UDP {
					hdr -= 12
				}
				if n < hdr {
					assert.Equal(t, Pass, d.Verdict, "cut at %d", n)
				} else {
					assert.Equal(t, TX, d.Verdict, "cut at %d", n)
				}
			}
		})
	}
	t.Run("ipv4 options longer than the frame", func(t *testing.T) {
		in := frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1), Dst: vip4}, tcpACK, nil)
		in[14] = 0x4f // 60-byte header: runs past the end
		d, _ := tw.both(in)
		assert.Equal(t, Pass, d.Verdict)
	})
	t.Run("ipv4 with options", func(t *testing.T) {
		l4 := frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1), Dst: vip4}, tcpACK, nil)[34:]
		in := ipFrame(client, vip4.Addr(), 6, append(make([]byte, 8), l4...))
		in[14] = 0x47                                 // 28-byte header
		copy(in[34:], []byte{1, 1, 1, 1, 1, 1, 1, 0}) // NOPs, end of options
		d, _ := tw.both(in)
		assert.Equal(t, TX, d.Verdict)
	})
}

// TestProgramMatchesModel sends thousands of random flows (several packets
// each, SYNs and not) through the program and the model, changing the
// backend set on the way, and requires the same backend for every frame
// and the same counters at the end.
func TestProgramMatchesModel(t *testing.T) {
	tw := newTwin(t)
	vips := fourServices(tw)
	rng := rand.New(rand.NewPCG(1, 2))
	randFlow := func() Flow {
		v := vips[rng.IntN(len(vips))]
		var src netip.Addr
		if v.Addr.Addr().Is4() {
			src = netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(256)), byte(rng.IntN(256))})
		} else {
			a := cli6.As16()
			a[14], a[15] = byte(rng.IntN(256)), byte(rng.IntN(256))
			src = netip.AddrFrom16(a)
		}
		return Flow{Proto: v.Proto, Src: netip.AddrPortFrom(src, uint16(1024+rng.IntN(60000))), Dst: v.Addr}
	}
	flows := make([]Flow, 2000)
	for i := range flows {
		flows[i] = randFlow()
	}
	send := func() {
		for _, f := range flows {
			flags := byte(tcpACK)
			if rng.IntN(4) == 0 {
				flags = tcpSYN
			}
			d, _ := tw.both(frame(f, flags, make([]byte, rng.IntN(64))))
			if d.Verdict == TX {
				require.Equal(t, d.Service, tw.m.backends[d.Backend].Service)
			}
		}
	}
	send()
	// Service 0 loses backend 1 to failure and drains backend 2; service
	// 2 gains backend 13; service 3 loses every backend.
	old := tw.ring(0, []uint32{1, 2, 3}, nil)
	tw.ring(0, []uint32{3}, old)
	tw.backend(1, BackendEntry{MAC: macOf(1), Up: false, Service: 0})
	tw.backend(13, BackendEntry{MAC: macOf(13), Up: true, Service: 2})
	tw.ring(2, []uint32{7, 8, 9, 13}, nil)
	require.NoError(t, tw.dp.setSlots(3, allSlots(), make([]uint32, RingSize))) // an empty ring is all 0
	tw.m.SetSlots(3, allSlots(), make([]uint32, RingSize))
	send()
	for range 1000 {
		tw.both(frame(randFlow(), tcpSYN, nil))
	}

	c, err := tw.dp.counters()
	require.NoError(t, err)
	assert.Equal(t, tw.m.Counters, c)
	assert.NotZero(t, c.ConnHits)
	assert.NotZero(t, c.ConnRepicks)
	assert.NotZero(t, c.NoBackend)
	for sid := range uint32(4) {
		got, err := tw.dp.serviceTraffic(sid)
		require.NoError(t, err)
		assert.Equal(t, tw.m.ServiceTraffic[sid], got, "service %d", sid)
	}
	for id := range uint32(14) {
		got, err := tw.dp.backendTraffic(id)
		require.NoError(t, err)
		assert.Equal(t, tw.m.BackendTraffic[id], got, "backend %d", id)
	}
}

func allSlots() []int {
	s := make([]int, RingSize)
	for i := range s {
		s[i] = i
	}
	return s
}

// TestProgramConnTable checks the connection table's semantics against the
// kernel: established flows keep their backend when the ring changes
// (backend added, backend drained), a TCP SYN follows the current ring, and
// a cached backend marked down is picked again.
func TestProgramConnTable(t *testing.T) {
	tw := newTwin(t)
	const sid = 0
	tw.service(VIP{vip4, TCP}, sid)
	for id := uint32(1); id <= 4; id++ {
		tw.backend(id, BackendEntry{MAC: macOf(id), Up: true, Service: sid})
	}
	ring := tw.ring(sid, []uint32{1, 2, 3}, nil)

	flows := make([]Flow, 500)
	first := make([]uint32, len(flows))
	for i := range flows {
		flows[i] = Flow{Proto: TCP, Src: netip.AddrPortFrom(client, uint16(10000+i)), Dst: vip4}
		d, _ := tw.both(frame(flows[i], tcpSYN, nil))
		require.Equal(t, TX, d.Verdict)
		first[i] = d.Backend
		id, ok := tw.dp.cachedBackend(flows[i], sid)
		require.True(t, ok, "the SYN created a connection entry")
		require.Equal(t, d.Backend, id)
	}
	ack := func(i int) Decision {
		d, _ := tw.both(frame(flows[i], tcpACK|tcpPSH, []byte("data")))
		return d
	}

	t.Run("backend added: established flows stay", func(t *testing.T) {
		ring = tw.ring(sid, []uint32{1, 2, 3, 4}, ring)
		moved := 0
		for i := range flows {
			d := ack(i)
			require.Equal(t, first[i], d.Backend, "flow %d", i)
			require.Equal(t, CacheHit, d.Cache)
			if uint32(ring.IDs()[ring.Lookup(FlowHash(flows[i]))]) != first[i] {
				moved++
			}
		}
		assert.NotZero(t, moved, "some flows' slots now belong to backend 4")
	})

	t.Run("backend drained: its flows stay, new connections avoid it", func(t *testing.T) {
		ring = tw.ring(sid, []uint32{2, 3, 4}, ring) // 1 out of the ring, still up
		onOne := 0
		for i := range flows {
			require.Equal(t, first[i], ack(i).Backend, "flow %d", i)
			if first[i] == 1 {
				onOne++
			}
		}
		require.NotZero(t, onOne)
		for i := range flows {
			f := flows[i]
			f.Src = netip.AddrPortFrom(f.Src.Addr(), f.Src.Port()+20000)
			d, _ := tw.both(frame(f, tcpSYN, nil))
			require.NotEqual(t, uint32(1), d.Backend, "new connection %d", i)
		}
	})

	t.Run("backend failed: its flows move, others stay", func(t *testing.T) {
		tw.backend(1, BackendEntry{MAC: macOf(1), Up: false, Service: sid})
		for i := range flows {
			d := ack(i)
			if first[i] == 1 {
				require.Equal(t, CacheRepick, d.Cache, "flow %d", i)
				require.Equal(t, uint32(ring.IDs()[ring.Lookup(FlowHash(flows[i]))]), d.Backend)
				require.NotEqual(t, uint32(1), d.Backend)
				// The entry now names the new backend.
				require.Equal(t, CacheHit, ack(i).Cache)
			} else {
				require.Equal(t, first[i], d.Backend, "flow %d", i)
			}
		}
	})

	t.Run("cached backend of another service is not used", func(t *testing.T) {
		f := Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 5), Dst: vip4}
		d, _ := tw.both(frame(f, tcpACK, nil))
		tw.backend(d.Backend, BackendEntry{MAC: macOf(d.Backend), Up: true, Service: 3})
		d2, _ := tw.both(frame(f, tcpACK, nil))
		assert.Equal(t, CacheRepick, d2.Cache)
	})

	c, err := tw.dp.counters()
	require.NoError(t, err)
	assert.Equal(t, tw.m.Counters, c)
}

// sameHome returns n VIPs (ports of addr, protocol proto) whose home slot
// in dp's VIP table is the table's last slot, so that probing for all but
// the first runs on and wraps around to slot 0.
func sameHome(tb testing.TB, dp *dataplane, addr netip.Addr, proto Protocol, n int) []VIP {
	tb.Helper()
	last := uint32(1)<<dp.vipBits - 1
	var out []VIP
	for port := 1; port < 1<<16 && len(out) < n; port++ {
		v := VIP{netip.AddrPortFrom(addr, uint16(port)), proto}
		if vipHome(vipKey(v), dp.vipBits) == last {
			out = append(out, v)
		}
	}
	require.Len(tb, out, n, "not enough VIPs with the same home slot")
	return out
}

// TestProgramVIPCollisions gives services VIPs that share their home slot
// in the VIP table (open addressing, linear probing): each must still
// reach its own service, a destination with the same home that is no VIP
// must pass, and the program must agree with the model throughout.
func TestProgramVIPCollisions(t *testing.T) {
	tw := newTwin(t)
	vips := sameHome(t, tw.dp, vip4.Addr(), TCP, 4)
	other := vips[3] // same home slot, not a service
	for s, v := range vips[:3] {
		sid := uint32(s)
		tw.service(v, sid)
		tw.backend(sid+1, BackendEntry{MAC: macOf(sid + 1), Up: true, Service: sid})
		tw.ring(sid, []uint32{sid + 1}, nil)
	}
	for s, v := range vips[:3] {
		d, _ := tw.both(frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1000), Dst: v.Addr}, tcpSYN, nil))
		assert.Equal(t, TX, d.Verdict, "%v", v)
		assert.Equal(t, uint32(s), d.Service, "%v", v)
	}
	d, _ := tw.both(frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1000), Dst: other.Addr}, tcpSYN, nil))
	assert.Equal(t, Pass, d.Verdict, "same home slot, not a service")
	d, _ = tw.both(frame(Flow{Proto: UDP, Src: netip.AddrPortFrom(client, 1000), Dst: vips[1].Addr}, 0, nil))
	assert.Equal(t, Pass, d.Verdict, "a service's address and port, other protocol")

	// Writing a VIP again moves it to another service in its slot.
	tw.service(vips[1], 2)
	d, _ = tw.both(frame(Flow{Proto: TCP, Src: netip.AddrPortFrom(client, 1001), Dst: vips[1].Addr}, tcpSYN, nil))
	assert.Equal(t, uint32(2), d.Service)
	c, err := tw.dp.counters()
	require.NoError(t, err)
	assert.Equal(t, tw.m.Counters, c)
}

// TestVIPTableFull requires setService to fail, rather than store a VIP
// the program would not find, when more VIPs share a home slot than the
// program probes.
func TestVIPTableFull(t *testing.T) {
	requireRoot(t)
	dp, err := loadDataplane(4, 8, 1024)
	require.NoError(t, err)
	t.Cleanup(func() { dp.Close() })
	vips := sameHome(t, dp, vip4.Addr(), UDP, vipProbes+1)
	for i, v := range vips[:vipProbes] {
		require.NoError(t, dp.setService(v, uint32(i%4)))
	}
	require.ErrorContains(t, dp.setService(vips[vipProbes], 0), "no free VIP table slot")
	require.NoError(t, dp.setService(vips[0], 3), "an existing VIP can still be rewritten")
}

// TestProgramConnTableFull fills a connection table of 64 flows with 1000
// new flows: the table holds at most 64 (the fill ConnTable reports), and
// segments of evicted flows count as ConnLost, the counter an operator
// watches to size the table. Below the size nothing is lost, and the
// program and the model agree.
func TestProgramConnTableFull(t *testing.T) {
	requireRoot(t)
	const size = 64
	dp, err := loadDataplane(4, 8, size)
	require.NoError(t, err)
	t.Cleanup(func() { dp.Close() })
	require.NoError(t, dp.setConfig(balancerMAC))
	tw := &twin{tb: t, dp: dp, m: NewModel(balancerMAC)}
	tw.service(VIP{vip4, TCP}, 0)
	tw.backend(1, BackendEntry{MAC: macOf(1), Up: true, Service: 0})
	tw.ring(0, []uint32{1}, nil)
	flow := func(i int) Flow {
		return Flow{Proto: TCP, Src: netip.AddrPortFrom(client, uint16(10000+i)), Dst: vip4}
	}

	for i := range 10 {
		tw.both(frame(flow(i), tcpSYN, nil))
	}
	n, err := dp.connEntries()
	require.NoError(t, err)
	assert.Equal(t, 10, n, "one entry per flow")
	for i := range 10 {
		d, _ := tw.both(frame(flow(i), tcpACK, nil))
		assert.Equal(t, CacheHit, d.Cache)
	}
	c, err := dp.counters()
	require.NoError(t, err)
	assert.Equal(t, tw.m.Counters, c)
	assert.Zero(t, c.ConnLost)

	for i := range 1000 {
		v, _ := tw.run(frame(flow(i), tcpSYN, nil))
		require.Equal(t, TX, v)
	}
	n, err = dp.connEntries()
	require.NoError(t, err)
	assert.LessOrEqual(t, n, size, "the table never holds more than its size")
	assert.Greater(t, n, size/2)
	for i := range 1000 {
		v, _ := tw.run(frame(flow(i), tcpACK, nil))
		require.Equal(t, TX, v, "an evicted flow picks from the ring again")
	}
	c, err = dp.counters()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, c.ConnLost, uint64(1000-size), "segments of evicted flows")
	assert.Equal(t, c.ConnLost, c.ConnMisses-10-1000, "every non-SYN miss of a TCP flow is lost")
	t.Logf("fill %d of %d; %d segments of evicted flows", n, size, c.ConnLost)
}

// TestProgramClientKey runs services that pick by the client's address
// (under a prefix) next to one that hashes the 5-tuple: the program and
// the model agree on every frame, and the clients of one prefix share a
// backend whatever their ports.
func TestProgramClientKey(t *testing.T) {
	tw := newTwin(t)
	vips := []VIP{{vip4, TCP}, {vip6, TCP}, {vip4u, UDP}}
	keys := []balancer.Key{balancer.MustParseKey("client/24"), balancer.MustParseKey("client/24,64"), balancer.MustParseKey("flow")}
	for s, v := range vips {
		sid := uint32(s)
		tw.service(v, sid)
		tw.key(sid, keys[s], v.Addr.Addr().Is4())
		ids := []uint32{}
		for i := range uint32(8) {
			id := sid*8 + i + 1
			tw.backend(id, BackendEntry{MAC: macOf(id), Up: true, Service: sid})
			ids = append(ids, id)
		}
		tw.ring(sid, ids, nil)
	}
	prefix4 := netip.MustParsePrefix("198.18.7.0/24")
	prefix6 := netip.MustParsePrefix("2001:db8:7:7::/64")
	backends := func(v VIP, src func(i int) netip.Addr) map[uint32]bool {
		seen := map[uint32]bool{}
		for i := range 40 {
			f := Flow{Proto: v.Proto, Src: netip.AddrPortFrom(src(i), uint16(20000+i*7)), Dst: v.Addr}
			flags := byte(tcpSYN)
			if v.Proto == UDP {
				flags = 0
			}
			d, _ := tw.both(frame(f, flags, nil))
			require.Equal(t, TX, d.Verdict)
			seen[d.Backend] = true
		}
		return seen
	}
	in4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 7, byte(i)}) }
	in6 := func(i int) netip.Addr {
		a := prefix6.Addr().As16()
		a[15], a[14] = byte(i), byte(i*3)
		return netip.AddrFrom16(a)
	}
	assert.True(t, prefix4.Contains(in4(39)) && prefix6.Contains(in6(39)))
	assert.Len(t, backends(vips[0], in4), 1, "one /24: one backend")
	assert.Len(t, backends(vips[1], in6), 1, "one /64: one backend")
	assert.Greater(t, len(backends(vips[2], in4)), 4, "the 5-tuple spreads the same clients")
	spread := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, byte(i), 7, 1}) }
	assert.Greater(t, len(backends(vips[0], spread)), 4, "many /24s spread")

	// Non-SYN segments of the same flows hit the connection table.
	f := Flow{Proto: TCP, Src: netip.AddrPortFrom(in4(1), 20007), Dst: vips[0].Addr}
	d, _ := tw.both(frame(f, tcpACK, nil))
	assert.Equal(t, CacheHit, d.Cache)
	c, err := tw.dp.counters()
	require.NoError(t, err)
	assert.Equal(t, tw.m.Counters, c)
	assert.Equal(t, KeyHash(balancer.Key{}, f), FlowHash(f), "no key: the 5-tuple")
}
