package iplb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// recorder is an nftConn that renders each queued operation as a line,
// in the style of `nft --debug=netlink`, and keeps the batches it was
// asked to flush. It lets the tests compare the batch the balancer would
// send against a golden text, without a kernel.
type recorder struct {
	queue   []string
	batches [][]string
	fail    error // returned (once) by the next Flush, which then commits nothing
	objs    []nftables.Obj
}

var _ nftConn = (*recorder)(nil)

func (r *recorder) add(format string, args ...any) {
	r.queue = append(r.queue, fmt.Sprintf(format, args...))
}

func (r *recorder) AddTable(t *nftables.Table) *nftables.Table {
	r.add("add table %s", t.Name)
	return t
}
func (r *recorder) DelTable(t *nftables.Table) { r.add("delete table %s", t.Name) }
func (r *recorder) AddChain(c *nftables.Chain) *nftables.Chain {
	if c.Hooknum != nil {
		r.add("add chain %s { type %s hook %d priority %d }", c.Name, c.Type, *c.Hooknum, *c.Priority)
	} else {
		r.add("add chain %s", c.Name)
	}
	return c
}
func (r *recorder) DelChain(c *nftables.Chain)   { r.add("delete chain %s", c.Name) }
func (r *recorder) FlushChain(c *nftables.Chain) { r.add("flush chain %s", c.Name) }
func (r *recorder) AddRule(rule *nftables.Rule) *nftables.Rule {
	r.add("add rule %s %s", rule.Chain.Name, renderExprs(rule.Exprs))
	return rule
}
func (r *recorder) AddObj(o nftables.Obj) nftables.Obj {
	r.add("add counter %s", o.(*nftables.CounterObj).Name)
	return o
}
func (r *recorder) DeleteObject(o nftables.Obj) {
	r.add("delete counter %s", o.(*nftables.CounterObj).Name)
}
func (r *recorder) AddSet(s *nftables.Set, elems []nftables.SetElement) error {
	r.add("add map %s { %s : %s }", s.Name, s.KeyType.Name, s.DataType.Name)
	return r.SetAddElements(s, elems)
}
func (r *recorder) DelSet(s *nftables.Set)   { r.add("delete map %s", s.Name) }
func (r *recorder) FlushSet(s *nftables.Set) { r.add("flush map %s", s.Name) }
func (r *recorder) SetAddElements(s *nftables.Set, elems []nftables.SetElement) error {
	if len(elems) > 0 {
		r.add("add element %s { %s }", s.Name, renderElems(elems))
	}
	return nil
}
func (r *recorder) SetDeleteElements(s *nftables.Set, elems []nftables.SetElement) error {
	r.add("delete element %s { %s }", s.Name, renderElems(elems))
	return nil
}
func (r *recorder) Flush() error {
	q := r.queue
	r.queue = nil
	if err := r.fail; err != nil {
		r.fail = nil
		return err
	}
	if len(q) > 0 {
		r.batches = append(r.batches, q)
	}
	return nil
}
func (r *recorder) GetObjects(*nftables.Table) ([]nftables.Obj, error) { return r.objs, nil }
func (r *recorder) CloseLasting() error                                { return nil }

// last returns the last flushed batch.
func (r *recorder) last() []string { return r.batches[len(r.batches)-1] }

func renderElems(elems []nftables.SetElement) string {
	parts := make([]string, len(elems))
	for i, e := range elems {
		parts[i] = renderData(e.Key)
		switch {
		case e.VerdictData != nil:
			parts[i] += " : jump " + e.VerdictData.Chain
		case e.Val != nil:
			parts[i] += " : " + renderData(e.Val)
		}
	}
	return strings.Join(parts, ", ")
}

// renderData renders a slot number (4 bytes, host order) or an address
// and port concatenation (8 or 20 bytes).
func renderData(b []byte) string {
	if len(b) == 4 {
		return fmt.Sprint(binary.NativeEndian.Uint32(b))
	}
	a, ok := netip.AddrFromSlice(b[:len(b)-4])
	if !ok {
		return fmt.Sprintf("%x", b)
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[len(b)-4:])).String()
}

// renderExprs renders expressions like `nft --debug=netlink`, one
// bracketed term each.
func renderExprs(exprs []expr.Any) string {
	var b strings.Builder
	for _, e := range exprs {
		b.WriteString("[ ")
		switch e := e.(type) {
		case *expr.Meta:
			fmt.Fprintf(&b, "meta load %s => reg %d", map[expr.MetaKey]string{expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyL4PROTO: "l4proto"}[e.Key], e.Register)
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}[e.Op]
			fmt.Fprintf(&b, "cmp %s reg %d 0x%x", op, e.Register, e.Data)
		case *expr.Payload:
			base := map[expr.PayloadBase]string{expr.PayloadBaseNetworkHeader: "network", expr.PayloadBaseTransportHeader: "transport"}[e.Base]
			fmt.Fprintf(&b, "payload load %db @ %s header + %d => reg %d", e.Len, base, e.Offset, e.DestRegister)
		case *expr.Objref:
			fmt.Fprintf(&b, "objref type %d name %s", e.Type, e.Name)
		case *expr.Hash:
			fmt.Fprintf(&b, "hash reg %d = jhash(reg %d, %d, 0x%x) %% mod %d", e.DestRegister, e.SourceRegister, e.Length, e.Seed, e.Modulus)
		case *expr.Numgen:
			fmt.Fprintf(&b, "numgen reg %d = inc mod %d", e.Register, e.Modulus)
		case *expr.Lookup:
			fmt.Fprintf(&b, "lookup reg %d set %s dreg %d", e.SourceRegister, e.SetName, e.DestRegister)
		case *expr.Immediate:
			fmt.Fprintf(&b, "immediate reg %d 0x%x", e.Register, e.Data)
		case *expr.NAT:
			kind := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
			fmt.Fprintf(&b, "nat %s family %d addr reg %d-%d proto reg %d-%d specified %v", kind, e.Family, e.RegAddrMin, e.RegAddrMax, e.RegProtoMin, e.RegProtoMax, e.Specified)
		case *expr.Ct:
			fmt.Fprintf(&b, "ct load key %d dir %d => reg %d", e.Key, e.Direction, e.Register)
		case *expr.Masq:
			b.WriteString("masq")
		case *expr.Bitwise:
			fmt.Fprintf(&b, "bitwise reg %d = ( reg %d & 0x%x ) ^ 0x%x", e.DestRegister, e.SourceRegister, e.Mask, e.Xor)
		default:
			fmt.Fprintf(&b, "%T", e)
		}
		b.WriteString(" ]")
	}
	return b.String()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// poolOf returns a Maglev pool with backends as its members.
func poolOf(t testing.TB, backends ...balancer.Backend) *balancer.Pool {
	t.Helper()
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}, Logger: quietLogger()})
	require.NoError(t, p.Set(backends))
	t.Cleanup(func() { p.Close() })
	return p
}

// newRecorded returns a serving balancer that records its batches. It
// is Manual: no goroutine races the test for the recorder.
func newRecorded(t *testing.T, svcs ...Service) (*Balancer, *recorder) {
	t.Helper()
	r := &recorder{}
	b, err := newBalancer(Config{Logger: quietLogger(), Manual: true, Services: svcs}, r)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- b.Serve(context.Background()) }()
	require.NoError(t, b.Sync(context.Background()))
	t.Cleanup(func() {
		require.NoError(t, b.Close())
		require.NoError(t, <-served)
	})
	return b, r
}

func golden(s string) []string {
	return strings.Split(strings.TrimSpace(strings.ReplaceAll(s, "\t", "")), "\n")
}

// anchorRule is the postrouting rule that keeps conntrack on.
const anchorRule = "add rule postrouting [ ct load key 0 dir 0 => reg 1 ][ bitwise reg 1 = ( reg 1 & 0x01000000 ) ^ 0x00000000 ][ cmp neq reg 1 0x00000000 ]"

var (
	be1 = netip.MustParseAddrPort("198.18.2.11:8080")
	be2 = netip.MustParseAddrPort("198.18.2.12:8080")
	be3 = netip.MustParseAddrPort("198.18.2.13:8080")
)

func TestBatchNewReplacesTable(t *testing.T) {
	_, r := newRecorded(t)
	want := golden(fmt.Sprintf(`
		add table lbkit
		delete table lbkit
		add table lbkit
		add chain prerouting { type nat hook %d priority -100 }
		add chain postrouting { type nat hook %d priority 100 }
		flush chain prerouting
		flush chain postrouting
		`+anchorRule, unix.NF_INET_PRE_ROUTING, unix.NF_INET_POST_ROUTING))
	require.Len(t, r.batches, 1, "one atomic batch")
	assert.Empty(t, cmp.Diff(want, r.batches[0]), "(-want +got)")
}

func TestBatchService(t *testing.T) {
	b, r := newRecorded(t)
	pool := poolOf(t, balancer.Backend{Addr: be1}, balancer.Backend{Addr: be2}, balancer.Backend{Addr: be3, Weight: 2})
	err := b.AddService(Service{
		Name: "web", VIP: netip.MustParseAddrPort("198.19.0.10:80"), Mode: FullNAT, TableSize: 7, Seed: 0x1234,
		Key: balancer.Key{Source: balancer.KeyFlow}, Pool: pool,
	})
	require.NoError(t, err)
	require.Len(t, r.batches, 2)
	// The slot owners come from the same Maglev table a Go picker uses.
	tbl, err := maglev.NewTable([]uint64{balancer.HashAddrPort(be1), balancer.HashAddrPort(be2), balancer.HashAddrPort(be3)}, []float64{1, 1, 2}, 7)
	require.NoError(t, err)
	var elems []string
	for i := range 7 {
		elems = append(elems, fmt.Sprintf("%d : %v", i, []netip.AddrPort{be1, be2, be3}[tbl.Slot(i)]))
	}
	match := "[ ct load key 7 dir 0 => reg 1 ][ cmp eq reg 1 0x02 ][ ct load key 9 dir 0 => reg 1 ][ cmp eq reg 1 0xc613000a ][ ct load key 10 dir 0 => reg 1 ][ cmp eq reg 1 0x06 ][ ct load key 12 dir 0 => reg 1 ][ cmp eq reg 1 0x0050 ]"
	want := golden(`
		add counter web
		add map web { mark : ipv4_addr . inet_service }
		add map web/backends { ipv4_addr . inet_service : verdict }
		add counter web/198.18.2.11:8080
		add chain web/198.18.2.11:8080
		add rule web/198.18.2.11:8080 [ objref type 1 name web/198.18.2.11:8080 ]
		add counter web/198.18.2.12:8080
		add chain web/198.18.2.12:8080
		add rule web/198.18.2.12:8080 [ objref type 1 name web/198.18.2.12:8080 ]
		add counter web/198.18.2.13:8080
		add chain web/198.18.2.13:8080
		add rule web/198.18.2.13:8080 [ objref type 1 name web/198.18.2.13:8080 ]
		add element web/backends { 198.18.2.11:8080 : jump web/198.18.2.11:8080, 198.18.2.12:8080 : jump web/198.18.2.12:8080, 198.18.2.13:8080 : jump web/198.18.2.13:8080 }
		add element web { ` + strings.Join(elems, ", ") + ` }
		flush chain prerouting
		flush chain postrouting
		` + anchorRule + `
		add rule prerouting [ meta load nfproto => reg 1 ][ cmp eq reg 1 0x02 ][ payload load 4b @ network header + 16 => reg 1 ][ cmp eq reg 1 0xc613000a ][ meta load l4proto => reg 1 ][ cmp eq reg 1 0x06 ][ payload load 2b @ transport header + 2 => reg 1 ][ cmp eq reg 1 0x0050 ][ objref type 1 name web ][ payload load 4b @ network header + 12 => reg 2 ][ payload load 2b @ transport header + 0 => reg 13 ][ hash reg 1 = jhash(reg 2, 8, 0x1234) % mod 7 ][ lookup reg 1 set web dreg 1 ][ nat dnat family 2 addr reg 1-1 proto reg 9-9 specified true ]
		add rule postrouting ` + match + `[ payload load 4b @ network header + 16 => reg 1 ][ payload load 2b @ transport header + 2 => reg 9 ][ lookup reg 1 set web/backends dreg 0 ]
		add rule postrouting ` + match + `[ masq ]`)
	assert.Empty(t, cmp.Diff(want, r.last()), "(-want +got)")

	t.Run("health change writes only the changed slots", func(t *testing.T) {
		require.True(t, pool.SetHealthy(be3, false))
		require.NoError(t, b.Sync(context.Background()))
		var changed []string
		for i := range 7 {
			if tbl.Slot(i) == 2 {
				changed = append(changed, fmt.Sprint(i))
			}
		}
		got := r.last()
		require.Len(t, got, 2, "delete then add, nothing else: %q", got)
		assert.Equal(t, "delete element web { "+strings.Join(changed, ", ")+" }", got[0])
		assert.True(t, strings.HasPrefix(got[1], "add element web { "+changed[0]+" : 198.18.2.1"), got[1])
		assert.NotContains(t, got[1], "198.18.2.13")
	})

	t.Run("nothing to do sends nothing", func(t *testing.T) {
		n := len(r.batches)
		require.NoError(t, b.Sync(context.Background()))
		assert.Len(t, r.batches, n)
	})

	t.Run("no ready backend empties the map", func(t *testing.T) {
		pool.SetHealthy(be1, false)
		pool.SetHealthy(be2, false)
		require.NoError(t, b.Sync(context.Background()))
		assert.Equal(t, []string{"flush map web"}, r.last())
		st, err := b.Stats()
		require.NoError(t, err)
		require.Len(t, st, 1)
		assert.Len(t, st[0].Backends, 3, "chains and counters stay for members")
		for _, bs := range st[0].Backends {
			assert.Zero(t, bs.Slots)
		}
	})

	t.Run("removed member loses chain and counter after its slots", func(t *testing.T) {
		pool.SetHealthy(be1, true)
		pool.SetHealthy(be2, true)
		require.NoError(t, b.Sync(context.Background()))
		require.True(t, pool.Remove(be2))
		require.NoError(t, b.Sync(context.Background()))
		got := r.last()
		require.GreaterOrEqual(t, len(got), 4)
		tail := got[len(got)-4:]
		assert.Equal(t, []string{
			"delete element web/backends { 198.18.2.12:8080 }",
			"flush chain web/198.18.2.12:8080", "delete chain web/198.18.2.12:8080", "delete counter web/198.18.2.12:8080",
		}, tail)
		for _, line := range got[:len(got)-4] {
			assert.NotContains(t, line, "198.18.2.12", "no slot may still name it")
		}
	})

	t.Run("remove service", func(t *testing.T) {
		require.NoError(t, b.RemoveService("web"))
		assert.Equal(t, golden(`
			flush chain prerouting
			flush chain postrouting
			`+anchorRule+`
			delete map web
			delete map web/backends
			flush chain web/198.18.2.11:8080
			delete chain web/198.18.2.11:8080
			delete counter web/198.18.2.11:8080
			flush chain web/198.18.2.13:8080
			delete chain web/198.18.2.13:8080
			delete counter web/198.18.2.13:8080
			delete counter web`), r.last())
		assert.ErrorIs(t, b.RemoveService("web"), ErrNotFound)
	})
}

func TestBatchIPv6RoundRobinSNAT(t *testing.T) {
	b, r := newRecorded(t)
	err := b.AddService(Service{
		Name: "dns", VIP: netip.MustParseAddrPort("[fd00:198:19::10]:53"), Proto: UDP,
		Mode: FullNAT, SNAT: netip.MustParseAddr("fd00:198:18:2::1"), TableSize: 5, Seed: 7,
		Pool: poolOf(t, balancer.Backend{Addr: netip.MustParseAddrPort("[fd00:198:18:2::11]:53")}),
	})
	require.NoError(t, err)
	got := r.last()
	match := "[ ct load key 7 dir 0 => reg 1 ][ cmp eq reg 1 0x0a ][ ct load key 9 dir 0 => reg 1 ][ cmp eq reg 1 0xfd000198001900000000000000000010 ][ ct load key 10 dir 0 => reg 1 ][ cmp eq reg 1 0x11 ][ ct load key 12 dir 0 => reg 1 ][ cmp eq reg 1 0x0035 ]"
	for _, want := range []string{
		"add map dns { mark : ipv6_addr . inet_service }",
		"add element dns/backends { [fd00:198:18:2::11]:53 : jump dns/[fd00:198:18:2::11]:53 }",
		"add element dns { 0 : [fd00:198:18:2::11]:53, 1 : [fd00:198:18:2::11]:53, 2 : [fd00:198:18:2::11]:53, 3 : [fd00:198:18:2::11]:53, 4 : [fd00:198:18:2::11]:53 }",
		"add rule prerouting [ meta load nfproto => reg 1 ][ cmp eq reg 1 0x0a ][ payload load 16b @ network header + 24 => reg 1 ][ cmp eq reg 1 0xfd000198001900000000000000000010 ][ meta load l4proto => reg 1 ][ cmp eq reg 1 0x11 ][ payload load 2b @ transport header + 2 => reg 1 ][ cmp eq reg 1 0x0035 ][ objref type 1 name dns ][ numgen reg 1 = inc mod 5 ][ lookup reg 1 set dns dreg 1 ][ nat dnat family 10 addr reg 1-1 proto reg 2-2 specified true ]",
		"add rule postrouting " + match + "[ payload load 16b @ network header + 24 => reg 1 ][ payload load 2b @ transport header + 2 => reg 2 ][ lookup reg 1 set dns/backends dreg 0 ]",
		"add rule postrouting " + match + "[ immediate reg 1 0xfd000198001800020000000000000001 ][ nat snat family 10 addr reg 1-1 proto reg 0-0 specified false ]",
	} {
		assert.Contains(t, got, want)
	}
}

func TestJhashIPv6Layout(t *testing.T) {
	svc := Service{Name: "x", VIP: netip.MustParseAddrPort("[fd00::1]:80"), Proto: TCP, Seed: 9, Key: balancer.MustParseKey("flow")}
	got := renderExprs(serviceExprs(&svc, slotMap(&nftables.Table{Name: "t"}, &svc), 251))
	// saddr fills 16-byte reg 2; sport follows in reg 3, as nft lays
	// out "jhash ip6 saddr . tcp sport".
	assert.Contains(t, got, "[ payload load 16b @ network header + 8 => reg 2 ][ payload load 2b @ transport header + 0 => reg 3 ][ hash reg 1 = jhash(reg 2, 20, 0x9) % mod 251 ]")
}

func TestKeyRules(t *testing.T) {
	for _, tc := range []struct {
		key, vip, want string
	}{
		{"", "198.19.0.10:80", "[ numgen reg 1 = inc mod 251 ]"},
		{"flow", "198.19.0.10:80", "[ payload load 4b @ network header + 12 => reg 2 ][ payload load 2b @ transport header + 0 => reg 13 ][ hash reg 1 = jhash(reg 2, 8, 0x9) % mod 251 ]"},
		{"client", "198.19.0.10:80", "[ payload load 4b @ network header + 12 => reg 2 ][ hash reg 1 = jhash(reg 2, 4, 0x9) % mod 251 ]"},
		{"client/24", "198.19.0.10:80", "[ payload load 4b @ network header + 12 => reg 2 ][ bitwise reg 2 = ( reg 2 & 0xffffff00 ) ^ 0x00000000 ][ hash reg 1 = jhash(reg 2, 4, 0x9) % mod 251 ]"},
		{"client/24,56", "[fd00::1]:80", "[ payload load 16b @ network header + 8 => reg 2 ][ bitwise reg 2 = ( reg 2 & 0xffffffffffffff000000000000000000 ) ^ 0x00000000000000000000000000000000 ][ hash reg 1 = jhash(reg 2, 16, 0x9) % mod 251 ]"},
		{"client/32", "198.19.0.10:80", "[ payload load 4b @ network header + 12 => reg 2 ][ hash reg 1 = jhash(reg 2, 4, 0x9) % mod 251 ]"},
		{"header:X-User", "198.19.0.10:80", "[ payload load 4b @ network header + 12 => reg 2 ][ hash reg 1 = jhash(reg 2, 4, 0x9) % mod 251 ]"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			svc := Service{Name: "x", VIP: netip.MustParseAddrPort(tc.vip), Seed: 9, Key: balancer.MustParseKey(tc.key), Pool: poolOf(t)}
			require.NoError(t, svc.validate())
			assert.Contains(t, renderExprs(serviceExprs(&svc, slotMap(&nftables.Table{Name: "t"}, &svc), 251)), tc.want)
		})
	}
	// Lookup's model of the masked hash: one /24, one slot.
	h, bits := (&Service{VIP: netip.MustParseAddrPort("198.19.0.10:80"), Key: balancer.MustParseKey("client/24")}).hashing()
	require.Equal(t, hashClient, h)
	a := flowSlot(netip.MustParseAddrPort("198.18.1.2:1000"), h, bits, 9, 251)
	assert.Equal(t, a, flowSlot(netip.MustParseAddrPort("198.18.1.200:2000"), h, bits, 9, 251))
	assert.Equal(t, flowSlot(netip.MustParseAddrPort("198.18.1.0:0"), hashClient, 0, 9, 251), a, "the masked address, alone")
	bad := Service{Name: "x", VIP: netip.MustParseAddrPort("198.19.0.10:80"), Key: balancer.Key{Source: balancer.KeyClient, Bits4: 33}, Pool: poolOf(t)}
	assert.ErrorContains(t, bad.validate(), "prefix length")
}

func TestMappedBackendIsIPv4(t *testing.T) {
	b, r := newRecorded(t)
	err := b.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("198.19.0.10:80"), TableSize: 2,
		Pool: poolOf(t, balancer.Backend{Addr: netip.MustParseAddrPort("[::ffff:198.18.2.11]:8080")})})
	require.NoError(t, err)
	assert.Contains(t, r.last(), "add element web { 0 : 198.18.2.11:8080, 1 : 198.18.2.11:8080 }")
}

func TestResizeRewritesMapAndModulus(t *testing.T) {
	b, r := newRecorded(t)
	pool := poolOf(t, balancer.Backend{Addr: be1})
	err := b.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("198.19.0.10:80"), Pool: pool})
	require.NoError(t, err)
	assert.Contains(t, strings.Join(r.last(), "\n"), "mod 251")
	var bs []balancer.Backend
	for i := range 5 {
		bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 3, byte(i + 1)}), 80)})
	}
	require.NoError(t, pool.Set(bs))
	require.NoError(t, b.Sync(context.Background()))
	got := strings.Join(r.last(), "\n")
	assert.True(t, strings.Contains(got, "flush map web"))
	assert.True(t, strings.Contains(got, "mod 1021"), "5 members need the next size")
	assert.True(t, strings.Contains(got, "delete chain web/198.18.2.11:8080"))
	n := strings.Count(got, " : 198.18.3.")
	assert.Equal(t, 1021, n, "every slot rewritten")
	assert.Equal(t, 4, strings.Count(got, "add element web {"), "chunks of %d", elemChunk)
}

func TestFailedBatchIsRetriedFromTheOldState(t *testing.T) {
	b, r := newRecorded(t)
	pool := poolOf(t, balancer.Backend{Addr: be1}, balancer.Backend{Addr: be2})
	err := b.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("198.19.0.10:80"), TableSize: 7, Pool: pool})
	require.NoError(t, err)
	r.fail = errors.New("kernel says no")
	pool.SetHealthy(be2, false)
	err = b.Sync(context.Background())
	require.ErrorContains(t, err, "kernel says no")
	st, err := b.Stats()
	require.NoError(t, err)
	require.Error(t, st[0].Err)
	// The retry diffs against what the kernel really holds.
	require.NoError(t, b.Sync(context.Background()))
	got := r.last()
	require.Len(t, got, 2)
	assert.True(t, strings.HasPrefix(got[0], "delete element web"))
	st, err = b.Stats()
	require.NoError(t, err)
	assert.NoError(t, st[0].Err)
	assert.Equal(t, pool.Snapshot().Version, st[0].Version)
}

func TestAddServiceErrors(t *testing.T) {
	b, r := newRecorded(t)
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	empty := poolOf(t)
	err := b.AddService(Service{Name: "a", VIP: vip, Pool: empty})
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		svc  Service
		want string
	}{
		{"duplicate name", Service{Name: "a", VIP: netip.MustParseAddrPort("198.19.0.11:80"), Pool: empty}, "already exists"},
		{"duplicate vip", Service{Name: "b", VIP: vip, Pool: empty}, "already exists"},
		{"bad name", Service{Name: "a b", VIP: vip, Pool: empty}, "service name"},
		{"no port", Service{Name: "c", VIP: netip.AddrPortFrom(vip.Addr(), 0), Pool: empty}, "needs an address and a port"},
		{"bad proto", Service{Name: "c", VIP: vip, Proto: 1, Pool: empty}, "want tcp or udp"},
		{"snat without fullnat", Service{Name: "c", VIP: vip, Proto: UDP, SNAT: netip.MustParseAddr("198.18.2.1"), Pool: empty}, "needs FullNAT"},
		{"snat family", Service{Name: "c", VIP: vip, Proto: UDP, Mode: FullNAT, SNAT: netip.MustParseAddr("fd00::1"), Pool: empty}, "differ in family"},
		{"table size not prime", Service{Name: "c", VIP: vip, Proto: UDP, TableSize: 100, Pool: empty}, "prime"},
		{"no pool", Service{Name: "c", VIP: vip, Proto: UDP}, "nil Pool"},
		{"backend family", Service{Name: "c", VIP: vip, Proto: UDP, Pool: poolOf(t, balancer.Backend{Addr: netip.MustParseAddrPort("[fd00::1]:80")})}, "differ in family"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(r.batches)
			err := b.AddService(tc.svc)
			assert.ErrorContains(t, err, tc.want)
			if tc.want == "already exists" {
				assert.ErrorIs(t, err, ErrExists)
			}
			assert.Len(t, r.batches, n, "nothing sent")
		})
	}
	t.Run("same VIP other protocol", func(t *testing.T) {
		err := b.AddService(Service{Name: "b", VIP: vip, Proto: UDP, Pool: empty})
		assert.NoError(t, err)
	})
	t.Run("refused batch leaves no service", func(t *testing.T) {
		r.fail = errors.New("no")
		err := b.AddService(Service{Name: "z", VIP: netip.MustParseAddrPort("198.19.0.99:80"), Pool: empty})
		require.Error(t, err)
		assert.Nil(t, b.Pool("z"))
	})
}

func TestLifecycle(t *testing.T) {
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	t.Run("nothing reaches the kernel before Serve", func(t *testing.T) {
		r := &recorder{}
		b, err := newBalancer(Config{Logger: quietLogger(), Services: []Service{{Name: "a", VIP: vip, Pool: poolOf(t)}}}, r)
		require.NoError(t, err)
		require.NoError(t, b.AddService(Service{Name: "b", VIP: netip.MustParseAddrPort("198.19.0.11:80"), Pool: poolOf(t)}))
		require.NoError(t, b.RemoveService("a"))
		st, err := b.Stats()
		require.NoError(t, err)
		require.Len(t, st, 1)
		assert.Equal(t, "b", st[0].Name)
		assert.Empty(t, r.batches)
		require.NoError(t, b.Close())
		assert.Empty(t, r.batches, "closed before Serve: no table to delete")
		assert.ErrorIs(t, b.Serve(context.Background()), ErrServerClosed)
	})
	t.Run("Serve installs everything in one batch; ctx ends it", func(t *testing.T) {
		r := &recorder{}
		b, err := newBalancer(Config{Logger: quietLogger(), Services: []Service{{Name: "a", VIP: vip, Pool: poolOf(t, balancer.Backend{Addr: be1})}}}, r)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- b.Serve(ctx) }()
		require.NoError(t, b.Sync(context.Background()))
		require.Len(t, r.batches, 1)
		got := strings.Join(r.batches[0], "\n")
		assert.True(t, strings.HasPrefix(got, "add table lbkit\ndelete table lbkit\nadd table lbkit"), got)
		assert.Contains(t, got, "add map a ")
		assert.Contains(t, got, "add rule prerouting")
		assert.ErrorIs(t, b.Serve(context.Background()), ErrServerClosed, "serving twice")
		cancel()
		require.NoError(t, <-served)
		assert.Equal(t, []string{"delete table lbkit"}, r.last())
		assert.ErrorIs(t, b.Sync(context.Background()), ErrServerClosed)
		require.NoError(t, b.Close())
		require.NoError(t, b.Shutdown(context.Background()))
	})
	t.Run("a refused table fails Serve", func(t *testing.T) {
		r := &recorder{fail: errors.New("kernel says no")}
		b, err := newBalancer(Config{Logger: quietLogger()}, r)
		require.NoError(t, err)
		assert.ErrorContains(t, b.Serve(context.Background()), "kernel says no")
		assert.ErrorIs(t, b.Sync(context.Background()), ErrServerClosed)
		require.NoError(t, b.Close())
	})
	t.Run("Shutdown stops Serve and waits for it", func(t *testing.T) {
		r := &recorder{}
		b, err := newBalancer(Config{Logger: quietLogger()}, r)
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		require.NoError(t, b.Sync(context.Background()))
		require.NoError(t, b.Shutdown(context.Background()))
		assert.Equal(t, []string{"delete table lbkit"}, r.last(), "deleted before Shutdown returns")
		require.NoError(t, <-served)
		err = b.AddService(Service{Name: "a", VIP: vip, Pool: poolOf(t)})
		assert.ErrorIs(t, err, ErrServerClosed)
		_, err = b.Stats()
		assert.ErrorIs(t, err, ErrServerClosed)
		assert.ErrorIs(t, b.RemoveService("a"), ErrServerClosed)
	})
}

func TestModeText(t *testing.T) {
	for _, m := range []Mode{Gateway, FullNAT} {
		text, err := m.MarshalText()
		require.NoError(t, err)
		var got Mode
		require.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, m, got)
	}
	var m Mode
	assert.ErrorContains(t, m.UnmarshalText([]byte("dsr")), "unknown mode")
	_, err := Mode(7).MarshalText()
	assert.Error(t, err)
}

func TestBatchSetServices(t *testing.T) {
	vipA, vipB := netip.MustParseAddrPort("198.19.0.10:80"), netip.MustParseAddrPort("198.19.0.11:80")
	a := Service{Name: "a", VIP: vipA, TableSize: 5, Pool: poolOf(t, balancer.Backend{Addr: be1})}
	bsvc := Service{Name: "b", VIP: vipB, TableSize: 5, Pool: poolOf(t, balancer.Backend{Addr: be2})}
	b, r := newRecorded(t, a, bsvc)
	n := len(r.batches)

	b6 := bsvc
	b6.VIP = netip.MustParseAddrPort("[fd00:198:19::11]:80")
	b6.Pool = poolOf(t, balancer.Backend{Addr: netip.MustParseAddrPort("[fd00:198:18:2::12]:8080")})
	c := Service{Name: "c", VIP: netip.MustParseAddrPort("198.19.0.12:80"), Proto: UDP, TableSize: 5, Pool: a.Pool}
	require.NoError(t, b.SetServices([]Service{a, b6, c}))
	require.Len(t, r.batches, n+1, "one batch")
	got := r.last()
	index := func(line string) int {
		t.Helper()
		i := slices.Index(got, line)
		require.GreaterOrEqual(t, i, 0, "missing %q in %q", line, got)
		return i
	}
	// b's maps change type: the hooks let go of them, they are deleted
	// and made again under the same names, and the hooks are rewritten.
	assert.Less(t, index("flush chain prerouting"), index("delete map b"))
	assert.Less(t, index("delete map b"), index("add map b { mark : ipv6_addr . inet_service }"))
	assert.Less(t, index("delete chain b/198.18.2.12:8080"), index("add chain b/[fd00:198:18:2::12]:8080"))
	assert.Contains(t, got, "add map c { mark : ipv4_addr . inet_service }")
	assert.NotContains(t, got, "add counter b", "b's counter carries on")
	for _, line := range got {
		assert.False(t, strings.HasPrefix(line, "add element a ") || strings.HasPrefix(line, "delete element a "), "a is untouched: %q", line)
	}
	assert.Equal(t, 3, strings.Count(strings.Join(got, "\n"), "add rule prerouting"))

	t.Run("a refused batch keeps the old services", func(t *testing.T) {
		r.fail = errors.New("no")
		err := b.SetServices([]Service{a})
		require.ErrorContains(t, err, "no")
		r.fail = nil
		assert.Equal(t, []string{"a", "b", "c"}, names(b.Services()))
		n := len(r.batches)
		require.NoError(t, b.Sync(context.Background()))
		assert.Len(t, r.batches, n, "the kernel still holds the old set: nothing to do")
		require.NoError(t, b.SetServices([]Service{a}))
		got := r.last()
		assert.Contains(t, got, "delete map b")
		assert.Contains(t, got, "delete counter c")
		assert.Equal(t, 1, strings.Count(strings.Join(got, "\n"), "add rule prerouting"))
	})
	t.Run("errors", func(t *testing.T) {
		n := len(r.batches)
		assert.ErrorIs(t, b.SetServices([]Service{a, a}), ErrExists)
		dup := c
		dup.VIP = a.VIP
		dup.Proto = TCP
		assert.ErrorIs(t, b.SetServices([]Service{a, dup}), ErrExists)
		assert.ErrorIs(t, b.UpdateService(c), ErrNotFound)
		assert.ErrorIs(t, b.AddService(a), ErrExists)
		assert.Len(t, r.batches, n, "nothing sent")
	})
}

func names(svcs []Service) []string {
	var out []string
	for _, s := range svcs {
		out = append(out, s.Name)
	}
	return out
}
