package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/internal/etcdtest"
)

// clusterConfig is a cluster configuration: pool web with members good
// and bad (whose health check fails), no listener.
func clusterConfig(quorum bool, members ...string) string {
	s := fmt.Sprintf("cluster: {quorum_eject: %v}\npools:\n  - name: web\n    members:\n", quorum)
	for _, m := range members {
		s += fmt.Sprintf("      - addr: %s\n", m)
	}
	return s + "    health: {type: http, path: /healthz, interval: 50ms, timeout: 1s, rise: 1, fall: 1}\nlisteners: []\n"
}

// healthBackend starts a backend whose /healthz answers ok or 503.
func healthBackend(t *testing.T, ok bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, "x")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// waitPool waits, on the pool's snapshots, until cond holds.
func waitPool(t *testing.T, d *Daemon, what string, cond func(p *balancer.Pool) bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		p := d.Pool("web")
		require.NotNil(t, p)
		s := p.Snapshot()
		if cond(p) {
			return
		}
		select {
		case <-s.Changed():
		case <-time.After(50 * time.Millisecond): // the pool may have been replaced
		case <-deadline:
			t.Fatalf("timed out waiting: %s; status: %+v", what, d.Status().Cluster)
		}
	}
}

func health2(p *balancer.Pool, addr string) balancer.Health {
	ep := p.Endpoint(netip.MustParseAddrPort(addr))
	if ep == nil {
		return balancer.HealthUnknown
	}
	return ep.Health()
}

// putView publishes a fake node's view, as another node would.
func putView(t *testing.T, c *clientv3.Client, prefix, node string, rev int64, members map[string]health.State) {
	t.Helper()
	b, err := json.Marshal(NodeView{Node: node, ConfigRevision: rev, Pools: map[string]map[string]health.State{"web": members}})
	require.NoError(t, err)
	_, err = c.Put(t.Context(), NodesPrefix(prefix)+node+"/health", string(b))
	require.NoError(t, err)
}

// TestClusterNode: a daemon started as a cluster node takes its
// configuration from etcd and applies each new revision (rejecting a bad
// one, which it shows while the old one keeps serving), publishes its view
// on a lease, and under quorum_eject keeps in service a member only it
// sees failing, ejects one that a quorum fails though it sees it healthy,
// and goes back to its own checks when the other views disappear or the
// policy is turned off.
func TestClusterNode(t *testing.T) {
	c := etcdtest.Client(t, etcdtest.Start(t))
	const prefix = "/t"
	good, bad := healthBackend(t, true), healthBackend(t, false)
	r, err := c.Put(t.Context(), ConfigKey(prefix), clusterConfig(true, good))
	require.NoError(t, err)
	rev1 := r.Header.Revision

	d := New(Options{AdminAddr: "off"})
	t.Cleanup(func() { d.Close() })
	stop, err := d.StartCluster(t.Context(), ClusterOptions{Client: c, Prefix: prefix, Node: "n1", Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(stop)
	assert.Equal(t, rev1, d.Status().Cluster.ConfigRevision)
	waitPool(t, d, "good healthy", func(p *balancer.Pool) bool { return health2(p, good) == balancer.Healthy })

	// A new revision: bad joins; alone, n1 is its own quorum and ejects it.
	r, err = c.Put(t.Context(), ConfigKey(prefix), clusterConfig(true, good, bad))
	require.NoError(t, err)
	rev2 := r.Header.Revision
	waitPool(t, d, "bad ejected by n1 alone", func(p *balancer.Pool) bool { return health2(p, bad) == balancer.Unhealthy })
	// The pool can change before the node records the revision it applied.
	require.Eventually(t, func() bool { return d.Status().Cluster.ConfigRevision == rev2 }, 10*time.Second, 10*time.Millisecond)

	// A bad revision is rejected; rev2 keeps serving.
	r, err = c.Put(t.Context(), ConfigKey(prefix), "pools: [{name: web, bogus: 1}]\n")
	require.NoError(t, err)
	rev3 := r.Header.Revision
	require.Eventually(t, func() bool { return d.Status().Cluster.RejectedRevision == rev3 }, 10*time.Second, 10*time.Millisecond)
	st := d.Status()
	assert.Equal(t, rev2, st.Cluster.ConfigRevision)
	assert.Contains(t, st.Cluster.RejectedError, "bogus")
	assert.False(t, st.LastReloadOK)
	require.NotNil(t, d.Pool("web").Endpoint(netip.MustParseAddrPort(bad)))

	// n1's own view is in etcd, on a lease.
	require.Eventually(t, func() bool {
		g, err := c.Get(t.Context(), NodesPrefix(prefix)+"n1/health")
		if err != nil || len(g.Kvs) == 0 || g.Kvs[0].Lease == 0 {
			return false
		}
		var v NodeView
		return json.Unmarshal(g.Kvs[0].Value, &v) == nil && v.ConfigRevision == rev2 && v.RejectedRevision == rev3 &&
			v.Pools["web"][bad] == health.Unhealthy && v.Pools["web"][good] == health.Healthy
	}, 10*time.Second, 10*time.Millisecond)

	// Two other nodes see bad healthy: only n1 fails it, so it stays in
	// service on n1. Both see good failing: a quorum, so n1 ejects it.
	putView(t, c, prefix, "n2", rev2, map[string]health.State{good: health.Unhealthy, bad: health.Healthy})
	putView(t, c, prefix, "n3", rev2, map[string]health.State{good: health.Unhealthy, bad: health.Healthy})
	waitPool(t, d, "quorum verdicts", func(p *balancer.Pool) bool {
		return health2(p, bad) == balancer.Healthy && health2(p, good) == balancer.Unhealthy
	})
	st = d.Status()
	assert.Equal(t, []string{"n1", "n2", "n3"}, st.Cluster.Nodes)
	require.Len(t, st.Cluster.Verdicts, 2)
	assert.Equal(t, Verdict{Pool: "web", Member: bad, Local: health.Unhealthy, Failing: 1, Voters: 3, InService: true}, findVerdict(st.Cluster.Verdicts, bad))
	assert.Equal(t, Verdict{Pool: "web", Member: good, Local: health.Healthy, Failing: 2, Voters: 3, InService: false}, findVerdict(st.Cluster.Verdicts, good))
	// The member's own check is still what n1 sees.
	assert.Equal(t, health.Unhealthy, findMember(t, st, bad).Check.State)

	// One of three failing good: no quorum, good is back.
	putView(t, c, prefix, "n3", rev2, map[string]health.State{good: health.Healthy, bad: health.Healthy})
	waitPool(t, d, "good back", func(p *balancer.Pool) bool { return health2(p, good) == balancer.Healthy })

	// The policy off: every node's own checks decide again.
	_, err = c.Put(t.Context(), ConfigKey(prefix), clusterConfig(false, good, bad))
	require.NoError(t, err)
	waitPool(t, d, "own checks", func(p *balancer.Pool) bool {
		return health2(p, bad) == balancer.Unhealthy && health2(p, good) == balancer.Healthy
	})
	assert.Empty(t, d.Status().Cluster.Verdicts)

	// Stopping revokes the lease: n1's view goes at once.
	stop()
	g, err := c.Get(t.Context(), NodesPrefix(prefix)+"n1/health")
	require.NoError(t, err)
	assert.Empty(t, g.Kvs)
}

func findVerdict(vs []Verdict, member string) Verdict {
	for _, v := range vs {
		if v.Member == member {
			return v
		}
	}
	return Verdict{}
}

func findMember(t *testing.T, st Status, addr string) MemberStatus {
	t.Helper()
	for _, p := range st.Pools {
		for _, m := range p.Members {
			if m.Addr == addr {
				require.NotNil(t, m.Check)
				return m
			}
		}
	}
	t.Fatalf("member %s not in status", addr)
	return MemberStatus{}
}
