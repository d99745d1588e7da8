//go:build linux

package ecmplab

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/l2lb"
)

// l2Fleet is 3 l2lb nodes behind the router, each with its own pool of
// the same members listed in a different order.
type l2Fleet struct {
	*Lab
	members []netip.AddrPort
	pools   []*balancer.Pool
	bals    []*l2lb.Balancer
	stop    []func() error // stop[i] closes node i's balancer and waits for Serve
}

// newL2Fleet builds a lab with backends backend hosts, serves l2lb on
// every node with the first members of them, and routes the VIP over all
// nodes.
func newL2Fleet(t *testing.T, backends, members int, hashing Hashing) *l2Fleet {
	t.Helper()
	l, err := New(t, Config{Backends: backends, Hashing: hashing})
	require.NoError(t, err)
	f := &l2Fleet{Lab: l, members: l.members(members)}
	vip := netip.AddrPortFrom(VIP, Port)
	for i, node := range l.Nodes {
		pool := newPool(t, f.members, i)
		var b *l2lb.Balancer
		require.NoError(t, node.Do(func() (err error) {
			b, err = l2lb.New(l2lb.Config{
				Interface: "eth0",
				Mode:      l2lb.AttachGeneric,
				Services:  []l2lb.Service{{VIP: vip, Pool: pool}},
				Logger:    quiet,
			})
			return err
		}))
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		stop := sync.OnceValue(func() error { return errors.Join(b.Close(), <-served) })
		t.Cleanup(func() { assert.NoError(t, stop()) })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := b.Sync(ctx)
		cancel()
		require.NoError(t, err, "node %d resolves the backends' MACs", i+1)
		f.pools, f.bals, f.stop = append(f.pools, pool), append(f.bals, b), append(f.stop, stop)
	}
	require.NoError(t, l.Route(0, 1, 2))
	return f
}

// l2Predictor returns the Go model's answer to "which backend does this
// client address and port reach": the flow hash the XDP program computes
// (l2lb.FlowHash) into the Maglev table of the members (built here from
// the member set alone, in canonical order).
func l2Predictor(t testing.TB, members []netip.AddrPort) (func(src netip.AddrPort) netip.AddrPort, *maglev.Table) {
	t.Helper()
	ids := make([]uint64, len(members))
	weights := make([]float64, len(members))
	byID := make(map[uint64]netip.AddrPort, len(members))
	for i, m := range members {
		ids[i], weights[i] = balancer.HashAddrPort(m), 1
		byID[ids[i]] = m
	}
	tbl, err := maglev.NewTable(ids, weights, l2lb.RingSize)
	require.NoError(t, err)
	vip := netip.AddrPortFrom(VIP, Port)
	return func(src netip.AddrPort) netip.AddrPort {
		h := l2lb.FlowHash(l2lb.Flow{Proto: l2lb.TCP, Src: src, Dst: vip})
		return byID[tbl.SlotID(int(h%l2lb.RingSize))]
	}, tbl
}

// entries returns each node's connection-table fill.
func (f *l2Fleet) entries(t testing.TB, nodes ...int) []int {
	t.Helper()
	out := make([]int, len(nodes))
	for i, n := range nodes {
		ct, err := f.bals[n].ConnTable()
		require.NoError(t, err)
		out[i] = ct.Entries
	}
	return out
}

// connLost returns the nodes' ConnLost counters summed: segments other
// than a SYN that found no connection-table entry.
func (f *l2Fleet) connLost(t testing.TB, nodes ...int) uint64 {
	t.Helper()
	var n uint64
	for _, i := range nodes {
		st, err := f.bals[i].Stats()
		require.NoError(t, err)
		n += st.ConnLost
	}
	return n
}

// kill stops node i's balancer, checks its XDP program is gone, and takes
// the node out of the router's VIP route, as a router's health check
// would.
func (f *l2Fleet) kill(t testing.TB, i int) {
	t.Helper()
	require.NoError(t, f.stop[i]())
	link, err := f.Nodes[i].Handle().LinkByName("eth0")
	require.NoError(t, err)
	require.False(t, link.Attrs().Xdp != nil && link.Attrs().Xdp.Attached, "node %d's XDP program is detached", i+1)
	var rest []int
	for n := range f.Nodes {
		if n != i {
			rest = append(rest, n)
		}
	}
	require.NoError(t, f.Route(rest...))
}

func sum(xs []int) int {
	s := 0
	for _, x := range xs {
		s += x
	}
	return s
}

// TestL2LBAgreement shows three l2lb nodes, given the same members in
// different orders and sharing nothing, sending every flow to the backend
// the Go model predicts, whichever node ECMP picks, and the very same
// flow to the same backend through each node in turn.
func TestL2LBAgreement(t *testing.T) {
	netlab.RequireRoot(t)
	f := newL2Fleet(t, 3, 3, Resilient)
	predict, tbl := l2Predictor(t, f.members)

	// The nodes' pools, listed in three orders, build one table.
	for i, p := range f.pools {
		got := p.Snapshot().Picker.(*maglev.Picker).Table()
		require.Equal(t, tbl.Size(), got.Size())
		require.Empty(t, got.Diff(tbl), "node %d's Maglev table differs from the model's", i+1)
	}

	flows := f.open(t, 300)
	for _, fl := range flows {
		require.Equal(t, f.nameOf(predict(fl.conn.Local)), fl.first.Backend, "flow %v", fl.conn.Local)
		require.Equal(t, fl.conn.Local, fl.first.Peer, "direct server return keeps the client's address")
	}
	carried := f.entries(t, 0, 1, 2)
	t.Logf("ECMP spread %d flows over the nodes: %v (connection-table entries)", len(flows), carried)
	assert.Equal(t, len(flows), sum(carried), "each flow crossed exactly one node")
	for i, n := range carried {
		assert.Greater(t, n, len(flows)/6, "node %d carries its share", i+1)
	}

	// The same flows, forced through each node in turn.
	var first map[netip.AddrPort]Reply
	for n := range f.Nodes {
		require.NoError(t, f.Route(n))
		before := f.entries(t, 0, 1, 2)
		got := f.forced(t)
		after := f.entries(t, 0, 1, 2)
		for k := range after {
			want := 0
			if k == n {
				want = forcedFlows // new flows to this node: first seen here
			}
			require.Equal(t, want, after[k]-before[k], "forced through node %d: node %d's connection table", n+1, k+1)
		}
		for src, r := range got {
			require.Equal(t, f.nameOf(predict(src)), r.Backend, "flow %v through node %d", src, n+1)
		}
		if first == nil {
			first = got
			continue
		}
		require.Equal(t, first, got, "node %d agrees with node 1", n+1)
	}
	require.NoError(t, f.Route(0, 1, 2))
}

// TestL2LBSurvival kills one of three l2lb nodes under established
// connections, as a router's health check would see it (the node's
// balancer and XDP program gone, its nexthop removed), and counts the
// connections that still reach their backend: the flows ECMP moves land
// on nodes whose connection tables miss them, and their Maglev lookup
// must give the same backend. Then again with a backend added at the
// moment the node dies.
func TestL2LBSurvival(t *testing.T) {
	netlab.RequireRoot(t)
	var rows []survival
	for _, tc := range scenarios {
		t.Run(tc.hashing.String()+"/"+tc.name, func(t *testing.T) {
			f := newL2Fleet(t, 4, 3, tc.hashing)
			predict, _ := l2Predictor(t, f.members)
			flows := f.open(t, openFlows)
			for _, fl := range flows {
				require.Equal(t, f.nameOf(predict(fl.conn.Local)), fl.first.Backend)
			}
			before := f.entries(t, 0, 1, 2)
			require.Equal(t, len(flows), sum(before))

			predictAfter := predict
			if tc.addBackend {
				grown := append(append([]netip.AddrPort(nil), f.members...), f.Backends[3].Addr)
				predictAfter, _ = l2Predictor(t, grown)
				for n := 1; n < 3; n++ {
					require.NoError(t, f.pools[n].Set(rotated(grown, n)))
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					err := f.bals[n].Sync(ctx)
					cancel()
					require.NoError(t, err)
				}
			}
			f.kill(t, 0)
			lost0 := f.connLost(t, 1, 2)

			replies, errs := askAll(flows)
			row := survival{plane: "l2lb (XDP, DSR)", hashing: tc.hashing, scenario: tc.name, flows: len(flows), onKilled: before[0]}
			for i, fl := range flows {
				changed := f.nameOf(predictAfter(fl.conn.Local)) != fl.first.Backend
				if changed {
					row.changed++
				}
				if errs[i] == nil && replies[i].Backend == fl.first.Backend {
					row.survived++
					continue
				}
				row.broke(errs[i])
				// A flow whose slot keeps its backend survives on any
				// node: only a moved flow whose slot changed may break.
				assert.True(t, changed, "flow %v broke (%v) though the new ring keeps its backend", fl.conn.Local, errs[i])
			}
			after := f.entries(t, 1, 2)
			row.moved = after[0] - before[1] + after[1] - before[2]
			// Each moved flow's first segment on its new node found no
			// entry and took the miss path: picked from the ring.
			assert.GreaterOrEqual(t, f.connLost(t, 1, 2)-lost0, uint64(row.moved), "moved flows took the connection table's miss path")
			rows = append(rows, row)
			report(t, row)
			if !tc.addBackend {
				assert.GreaterOrEqual(t, row.share(), 0.99, "goal: 99 %% of connections survive")
				assert.Equal(t, len(flows), row.survived, "with the backend set unchanged every node agrees")
			}
			assert.GreaterOrEqual(t, row.moved, row.onKilled, "the killed node's flows re-hashed to the others")
			if tc.hashing == Resilient {
				assert.Equal(t, row.onKilled, row.moved, "a resilient group moves only the killed node's flows")
			}
		})
	}
	report(t, rows...)
}
