//go:build linux

package ecmplab

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/iplb"
)

// ipService is the name of the iplb service on every node: the same name
// gives the same jhash seed everywhere.
const ipService = "web"

// ipFleet is 3 iplb nodes behind the router, FullNAT, each with its own
// pool of the same members listed in a different order.
//
// FullNAT, not Gateway mode: with NAT every reply must return through
// the node holding the flow's conntrack entry. In Gateway mode backends
// send replies to their gateway, one fixed node (or the router), not the
// node ECMP chose for the flow, so the translation would not be undone.
// FullNAT rewrites the source to the node's own address, so the backend
// answers that node, which reverses both translations.
type ipFleet struct {
	*Lab
	members []netip.AddrPort
	pools   []*balancer.Pool
	bals    []*iplb.Balancer
	stop    []func() error
}

func newIPFleet(t *testing.T, backends, members int, hashing Hashing) *ipFleet {
	t.Helper()
	l, err := New(t, Config{Backends: backends, Forwarding: true, Hashing: hashing})
	require.NoError(t, err)
	f := &ipFleet{Lab: l, members: l.members(members)}
	for i, node := range l.Nodes {
		pool := newPool(t, f.members, i)
		b, err := iplb.New(iplb.Config{
			NetNS: int(node.NS()),
			Services: []iplb.Service{{
				Name: ipService, VIP: netip.AddrPortFrom(VIP, Port), Mode: iplb.FullNAT,
				Key: balancer.MustParseKey("flow"), Pool: pool,
			}},
			Logger: quiet,
		})
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		stop := sync.OnceValue(func() error { return errors.Join(b.Close(), <-served) })
		t.Cleanup(func() { assert.NoError(t, stop()) })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = b.Sync(ctx)
		cancel()
		require.NoError(t, err)
		f.pools, f.bals, f.stop = append(f.pools, pool), append(f.bals, b), append(f.stop, stop)
	}
	require.NoError(t, l.Route(0, 1, 2))
	return f
}

// predict asks every live node's Lookup where src goes, requires them to
// agree and returns the backend's name.
func (f *ipFleet) predict(t testing.TB, src netip.AddrPort, nodes ...int) string {
	t.Helper()
	var want netip.AddrPort
	for _, n := range nodes {
		got, ok := f.bals[n].Lookup(ipService, src)
		require.True(t, ok, "node %d looks %v up", n+1, src)
		if n == nodes[0] {
			want = got
		}
		require.Equal(t, want, got, "nodes %d and %d disagree on %v", nodes[0]+1, n+1, src)
	}
	return f.nameOf(want)
}

// kill stops node i's balancer, checks its nftables table is gone, and
// takes the node out of the router's VIP route, as a router's health
// check would.
func (f *ipFleet) kill(t testing.TB, i int) {
	t.Helper()
	require.NoError(t, f.stop[i]())
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Nodes[i].NS())))
	require.NoError(t, err)
	tables, err := c.ListTables()
	require.NoError(t, err)
	require.Empty(t, tables, "node %d's nftables table is deleted", i+1)
	var rest []int
	for n := range f.Nodes {
		if n != i {
			rest = append(rest, n)
		}
	}
	require.NoError(t, f.Route(rest...))
}

// nodeOf returns the index of the node whose address a backend saw as its
// peer, or -1.
func (f *ipFleet) nodeOf(peer netip.AddrPort) int {
	for i := range f.Nodes {
		if f.NodeAddr(i) == peer.Addr() {
			return i
		}
	}
	return -1
}

// TestIPLBAgreement shows three iplb nodes (nftables, FullNAT), given the
// same members in different orders, sending every flow to the backend
// their Lookup predicts (all nodes agreeing), whichever node ECMP picks,
// and the very same flow to the same backend through each node in turn.
func TestIPLBAgreement(t *testing.T) {
	netlab.RequireRoot(t)
	f := newIPFleet(t, 3, 3, Resilient)

	flows := f.open(t, 300)
	carried := make([]int, len(f.Nodes))
	oneClient := make([]int, len(f.Nodes)) // flows of the first client address
	for _, fl := range flows {
		require.Equal(t, f.predict(t, fl.conn.Local, 0, 1, 2), fl.first.Backend, "flow %v", fl.conn.Local)
		n := f.nodeOf(fl.first.Peer)
		require.GreaterOrEqual(t, n, 0, "FullNAT: the backend sees a node, not %v", fl.first.Peer)
		carried[n]++
		if fl.conn.Local.Addr() == f.ClientAddrs[0] {
			oneClient[n]++
		}
	}
	t.Logf("ECMP spread %d flows over the nodes: %v; those of client %v alone: %v", len(flows), carried, f.ClientAddrs[0], oneClient)
	for i := range carried {
		assert.Greater(t, carried[i], len(flows)/6, "node %d carries its share", i+1)
		assert.Greater(t, oneClient[i], 0, "the router hashes ports too: one client's flows reach node %d", i+1)
	}

	// The router hashes the headers: the same 5-tuple dialed again (a
	// new socket, so a new txhash) takes the same node.
	again1, again2 := f.forced(t), f.forced(t)
	for src, r := range again1 {
		require.Equal(t, f.nodeOf(r.Peer), f.nodeOf(again2[src].Peer), "flow %v dialed twice", src)
	}

	var first map[netip.AddrPort]string
	for n := range f.Nodes {
		require.NoError(t, f.Route(n))
		got := map[netip.AddrPort]string{}
		for src, r := range f.forced(t) {
			require.Equal(t, n, f.nodeOf(r.Peer), "flow %v forced through node %d", src, n+1)
			require.Equal(t, f.predict(t, src, 0, 1, 2), r.Backend, "flow %v through node %d", src, n+1)
			got[src] = r.Backend
		}
		if first == nil {
			first = got
			continue
		}
		require.Equal(t, first, got, "node %d agrees with node 1", n+1)
	}
	require.NoError(t, f.Route(0, 1, 2))
}

// TestIPLBSurvival kills one of three iplb nodes under established
// connections (its nftables table deleted, its nexthop removed) and
// counts the connections that still reach their backend. The survivors
// pick the same backend for a moved flow (same Maglev table, same jhash
// seed), but under FullNAT the moved flow arrives at the backend from
// another node's address: the backend has no such connection and resets
// it. So, unlike l2lb, a flow survives only if ECMP leaves it on its node.
func TestIPLBSurvival(t *testing.T) {
	netlab.RequireRoot(t)
	var rows []survival
	for _, tc := range scenarios {
		t.Run(tc.hashing.String()+"/"+tc.name, func(t *testing.T) {
			f := newIPFleet(t, 4, 3, tc.hashing)
			flows := f.open(t, openFlows)
			row := survival{plane: "iplb (nftables, FullNAT)", hashing: tc.hashing, scenario: tc.name, flows: len(flows), moved: -1, survivedFromKilledN: true}
			for _, fl := range flows {
				if f.nodeOf(fl.first.Peer) == 0 {
					row.onKilled++
				}
			}
			live := []int{1, 2}
			if tc.addBackend {
				grown := append(append([]netip.AddrPort(nil), f.members...), f.Backends[3].Addr)
				for n := 1; n < 3; n++ {
					require.NoError(t, f.pools[n].Set(rotated(grown, n)))
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					err := f.bals[n].Sync(ctx)
					cancel()
					require.NoError(t, err)
				}
			}
			f.kill(t, 0)

			replies, errs := askAll(flows)
			for i, fl := range flows {
				if f.predict(t, fl.conn.Local, live...) != fl.first.Backend {
					row.changed++
				}
				if errs[i] != nil {
					row.broke(errs[i])
					continue
				}
				assert.Equal(t, fl.first, replies[i], "a flow that answers answers from its backend, through its node")
				if replies[i].Backend == fl.first.Backend {
					row.survived++
					if f.nodeOf(fl.first.Peer) == 0 {
						row.survivedFromKilled++
					}
				}
			}
			rows = append(rows, row)
			report(t, row)
			assert.Zero(t, row.survivedFromKilled, "FullNAT: a flow that changes node cannot survive")
			if tc.hashing == Resilient {
				assert.Equal(t, row.flows-row.onKilled, row.survived, "a resilient group leaves every other flow on its node")
			}
		})
	}
	report(t, rows...)
}
