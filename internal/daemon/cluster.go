package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/health"
)

// A cluster is N lbkit serve nodes that share state through etcd, not
// through a protocol of their own:
//
//	PREFIX/config              the configuration (YAML), one for all nodes
//	PREFIX/nodes/NAME/health   each node's view of its members' health, on
//	                           a lease: a node that dies stops renewing it,
//	                           and its view (and vote) disappears
//
// Every node applies each revision of PREFIX/config as a reload (a bad one
// is rejected by each node, which keeps serving the last good one and
// shows the rejection in /status), publishes its health checker's verdict
// on every member, and, when the configuration's cluster.quorum_eject is
// on, sets each member's health in its pools to the quorum's verdict (see
// config.Cluster.QuorumEject). Picking needs no shared state at all: with
// a hash policy (maglev, ringhash, rendezvous) and the same ready set,
// every node picks the same member for the same key.

// Defaults of ClusterOptions.
const (
	DefaultClusterTTL      = 5 * time.Second
	DefaultClusterInterval = 100 * time.Millisecond
)

// ClusterOptions configures a daemon's membership in a cluster.
type ClusterOptions struct {
	// Client is the etcd client. Required; the caller closes it after
	// the cluster has stopped.
	Client *clientv3.Client
	// Prefix is the cluster's key prefix, such as /lbkit/prod. Required.
	Prefix string
	// Node is this node's name, unique in the cluster. Required.
	Node string
	// TTL is the lease of the node's view: a node that stops renewing it
	// (dead, or cut off from etcd) loses its vote TTL later. Zero means
	// DefaultClusterTTL.
	TTL time.Duration
	// Interval is how often the node compares its health view with the
	// one it published (and publishes it when it changed) and applies the
	// quorum's verdicts; a health event of the node's own checkers
	// applies them at once. Zero means DefaultClusterInterval.
	Interval time.Duration
}

// Config returns the configuration the daemon runs, nil before Start.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// ConfigKey returns the key that holds a cluster's configuration.
func ConfigKey(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/config" }

// NodesPrefix returns the key prefix of a cluster's node views.
func NodesPrefix(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/nodes/" }

// NodeView is what a node publishes under PREFIX/nodes/NAME/health, as
// JSON: the configuration revision it runs and its own health checkers'
// verdict on every member of every pool.
type NodeView struct {
	Node string `json:"node"`
	// ConfigRevision is the etcd revision (ModRevision) of the
	// configuration the node runs.
	ConfigRevision int64 `json:"config_revision"`
	// RejectedRevision and RejectedError name the last revision of the
	// configuration the node rejected since it started, if any.
	RejectedRevision int64  `json:"rejected_revision,omitempty"`
	RejectedError    string `json:"rejected_error,omitempty"`
	// Pools maps pool name to member address to the node's own verdict:
	// unknown (not probed yet), healthy or unhealthy.
	Pools map[string]map[string]health.State `json:"pools"`
}

// ClusterStatus is the cluster part of /status.
type ClusterStatus struct {
	Node   string `json:"node"`
	Prefix string `json:"prefix"`
	// ConfigRevision is the etcd revision of the configuration this node
	// runs; every node of a cluster in step shows the same.
	ConfigRevision int64 `json:"config_revision"`
	// RejectedRevision and RejectedError name the last configuration
	// revision this node rejected (it kept serving the one before).
	RejectedRevision int64  `json:"rejected_revision,omitempty"`
	RejectedError    string `json:"rejected_error,omitempty"`
	// Nodes are the live nodes: those whose view is in etcd, this one
	// included once published.
	Nodes []string `json:"nodes"`
	// QuorumEject is the configuration's cluster.quorum_eject.
	QuorumEject bool `json:"quorum_eject"`
	// Verdicts lists the members whose health in the pool is the
	// quorum's and differs from this node's own check.
	Verdicts []Verdict `json:"verdicts,omitempty"`
}

// Verdict is the quorum's decision on a member that this node's own check
// disagrees with.
type Verdict struct {
	Pool   string `json:"pool"`
	Member string `json:"member"`
	// Local is this node's own check; Failing of Voters nodes see the
	// member failing.
	Local   health.State `json:"local"`
	Failing int          `json:"failing"`
	Voters  int          `json:"voters"`
	// InService is the quorum's decision.
	InService bool `json:"in_service"`
}

// clusterNode is a daemon's part in a cluster.
type clusterNode struct {
	d    *Daemon
	opts ClusterOptions
	log  *slog.Logger
	kick chan struct{} // a health event or a remote view: evaluate now

	mu        sync.Mutex
	applied   int64 // config revision running
	rejected  int64
	rejectErr string
	views     map[string]NodeView // by node name, this node's excluded
	verdicts  []Verdict
	quorum    bool
	subs      map[*health.Checker]func()
	// overridden holds the members whose pool health is a verdict that
	// differs from the node's own check.
	overridden map[overrideKey]bool
}

type overrideKey struct {
	pool string
	addr netip.AddrPort
}

// LoadClusterConfig reads a cluster's configuration from etcd and returns
// it with its revision. A key with no value, or a configuration that does
// not load, is an error.
func LoadClusterConfig(ctx context.Context, c *clientv3.Client, prefix string) (*config.Config, int64, error) {
	key := ConfigKey(prefix)
	r, err := c.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("daemon: etcd: get %s: %w", key, err)
	}
	if len(r.Kvs) == 0 {
		return nil, 0, fmt.Errorf("daemon: etcd: no configuration at %s (put one with etcdctl put %s < lbkit.yaml)", key, key)
	}
	kv := r.Kvs[0]
	cfg, err := parseClusterConfig(key, kv.ModRevision, kv.Value)
	return cfg, kv.ModRevision, err
}

// parseClusterConfig loads the configuration of a revision; errors name
// "etcd:KEY@REV:LINE:COL". File names in it must be absolute (they are
// read on every node).
func parseClusterConfig(key string, rev int64, value []byte) (*config.Config, error) {
	return config.Parse(fmt.Sprintf("etcd:%s@%d", key, rev), value)
}

// StartCluster makes the daemon a node of the cluster under
// opts.Prefix: it loads the configuration from etcd and starts with it
// (see Start), then, until ctx ends or the returned stop is called,
// applies every new revision of it, publishes the node's health view and
// applies the quorum's verdicts. stop revokes the node's lease, so its
// view disappears at once, and waits for the cluster's goroutines; it
// does not stop the daemon.
func (d *Daemon) StartCluster(ctx context.Context, opts ClusterOptions) (stop func(), err error) {
	if opts.Client == nil || opts.Prefix == "" || opts.Node == "" {
		return nil, errors.New("daemon: cluster needs a client, a prefix and a node name")
	}
	if strings.Contains(opts.Node, "/") {
		return nil, fmt.Errorf("daemon: cluster node name %q has a '/'", opts.Node)
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultClusterTTL
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultClusterInterval
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	cfg, rev, err := LoadClusterConfig(rctx, opts.Client, opts.Prefix)
	cancel()
	if err != nil {
		return nil, err
	}
	n := &clusterNode{
		d: d, opts: opts, log: d.log.With("node", opts.Node), kick: make(chan struct{}, 1),
		applied: rev, views: make(map[string]NodeView), subs: make(map[*health.Checker]func()),
	}
	d.cluster.Store(n)
	if err := d.Apply(cfg, fmt.Sprintf("etcd revision %d", rev)); err != nil {
		d.cluster.Store(nil)
		d.Close()
		return nil, err
	}
	ctx, cancel = context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { n.watchConfig(ctx, rev) })
	wg.Go(func() { n.watchViews(ctx) })
	wg.Go(func() { n.publish(ctx) })
	return func() {
		cancel()
		wg.Wait()
		n.mu.Lock()
		for _, unsub := range n.subs {
			unsub()
		}
		clear(n.subs)
		n.mu.Unlock()
	}, nil
}

// retry waits before a failed etcd call is tried again; false when ctx
// ended.
func retry(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watchConfig applies each new revision of the configuration key. When
// the watch breaks (compaction, lost connection) it reads the key again
// and watches from there.
func (n *clusterNode) watchConfig(ctx context.Context, rev int64) {
	key := ConfigKey(n.opts.Prefix)
	for ctx.Err() == nil {
		wch := n.opts.Client.Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithRev(rev+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				n.log.Warn("daemon: cluster: configuration watch broke; reading the key again", "err", err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					n.apply(ev.Kv.ModRevision, ev.Kv.Value)
				}
				rev = max(rev, ev.Kv.ModRevision)
			}
		}
		if ctx.Err() != nil || !retry(ctx, 500*time.Millisecond) {
			return
		}
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := n.opts.Client.Get(gctx, key)
		cancel()
		if err != nil {
			continue
		}
		if len(r.Kvs) > 0 && r.Kvs[0].ModRevision > rev {
			n.apply(r.Kvs[0].ModRevision, r.Kvs[0].Value)
		}
		rev = max(rev, r.Header.Revision)
	}
}

// apply loads and applies one revision of the configuration.
func (n *clusterNode) apply(rev int64, value []byte) {
	trigger := fmt.Sprintf("etcd revision %d", rev)
	cfg, err := parseClusterConfig(ConfigKey(n.opts.Prefix), rev, value)
	if err != nil {
		n.d.recordReload(trigger, err)
	} else {
		err = n.d.Apply(cfg, trigger)
	}
	n.mu.Lock()
	if err != nil {
		n.rejected, n.rejectErr = rev, err.Error()
	} else {
		n.applied = rev
	}
	n.mu.Unlock()
	n.poke()
}

func (n *clusterNode) poke() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// watchViews follows the other nodes' views.
func (n *clusterNode) watchViews(ctx context.Context) {
	prefix := NodesPrefix(n.opts.Prefix)
	own := prefix + n.opts.Node + "/health"
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := n.opts.Client.Get(gctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			retry(ctx, 500*time.Millisecond)
			continue
		}
		views := make(map[string]NodeView)
		for _, kv := range r.Kvs {
			if v, ok := decodeView(kv.Key, kv.Value, own); ok {
				views[v.Node] = v
			}
		}
		n.setViews(func(m map[string]NodeView) { clear(m); maps.Copy(m, views) })
		wch := n.opts.Client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
		for wr := range wch {
			if wr.Err() != nil {
				break
			}
			n.setViews(func(m map[string]NodeView) {
				for _, ev := range wr.Events {
					name := nodeOfKey(string(ev.Kv.Key), prefix)
					if ev.Type == clientv3.EventTypeDelete {
						delete(m, name)
					} else if v, ok := decodeView(ev.Kv.Key, ev.Kv.Value, own); ok {
						m[v.Node] = v
					}
				}
			})
		}
		if ctx.Err() == nil {
			retry(ctx, 500*time.Millisecond)
		}
	}
}

func nodeOfKey(key, prefix string) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(key, prefix), "/")
	return name
}

// decodeView decodes a node's view; false for this node's own key, other
// keys and values that do not decode.
func decodeView(key, value []byte, own string) (NodeView, bool) {
	if string(key) == own || !strings.HasSuffix(string(key), "/health") {
		return NodeView{}, false
	}
	var v NodeView
	if err := json.Unmarshal(value, &v); err != nil || v.Node == "" {
		return NodeView{}, false
	}
	return v, true
}

func (n *clusterNode) setViews(f func(map[string]NodeView)) {
	n.mu.Lock()
	f(n.views)
	n.mu.Unlock()
	n.poke()
}

// publish keeps the node's view in etcd on a lease, put again whenever
// it changes, and applies the quorum's verdicts at each tick and kick.
func (n *clusterNode) publish(ctx context.Context) {
	key := NodesPrefix(n.opts.Prefix) + n.opts.Node + "/health"
	tick := time.NewTicker(n.opts.Interval)
	defer tick.Stop()
	var lease clientv3.LeaseID
	var alive <-chan *clientv3.LeaseKeepAliveResponse
	var kaCancel context.CancelFunc = func() {}
	defer func() {
		kaCancel()
		if lease != 0 {
			// Revoke, so the view (and the vote) goes at once.
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = n.opts.Client.Revoke(rctx, lease)
			cancel()
		}
	}()
	var last []byte
	for {
		view := n.evaluate()
		if lease == 0 {
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			g, err := n.opts.Client.Grant(gctx, int64((n.opts.TTL+time.Second-1)/time.Second))
			cancel()
			if err == nil {
				kctx, kc := context.WithCancel(ctx)
				if alive, err = n.opts.Client.KeepAlive(kctx, g.ID); err == nil {
					lease, kaCancel, last = g.ID, kc, nil
				} else {
					kc()
				}
			}
			if err != nil && ctx.Err() == nil {
				n.log.Warn("daemon: cluster: no lease for the node's view", "err", err)
			}
		}
		if b, err := json.Marshal(view); err == nil && lease != 0 && !bytes.Equal(b, last) {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := n.opts.Client.Put(pctx, key, string(b), clientv3.WithLease(lease))
			cancel()
			if err == nil {
				last = b
			} else if ctx.Err() == nil {
				n.log.Warn("daemon: cluster: publishing the node's view", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.kick:
		case _, ok := <-alive:
			if !ok { // the lease is lost: a new one, and the view again
				if ctx.Err() != nil {
					return // stopping: the keep-alive ended with ctx, and the lease is revoked
				}
				kaCancel()
				lease, alive = 0, nil
			}
		}
	}
}

// poolRef is one running pool, read under the daemon's lock.
type poolRef struct {
	name    string
	pool    *balancer.Pool
	checker *health.Checker
}

// evaluate returns the node's own view and, under quorum_eject, sets each
// member's health in its pool to the quorum's verdict; without it, to the
// node's own check (undoing verdicts of a policy just turned off).
func (n *clusterNode) evaluate() NodeView {
	d := n.d
	d.mu.Lock()
	quorum := d.cfg != nil && d.cfg.Cluster.QuorumEject
	refs := make([]poolRef, 0, len(d.pools))
	for name, ps := range d.pools {
		refs = append(refs, poolRef{name, ps.pool, ps.checker})
	}
	d.mu.Unlock()

	n.mu.Lock()
	defer n.mu.Unlock()
	n.subscribe(refs)
	view := NodeView{Node: n.opts.Node, ConfigRevision: n.applied, RejectedRevision: n.rejected, RejectedError: n.rejectErr, Pools: make(map[string]map[string]health.State)}
	var verdicts []Verdict
	overridden := make(map[overrideKey]bool)
	for _, r := range refs {
		local := make(map[string]health.State)
		for _, ep := range r.pool.Snapshot().Members {
			addr := ep.Backend().Addr
			own := r.checker.State(addr)
			local[addr.String()] = own
			k := overrideKey{r.name, addr}
			want := own
			if quorum && own != health.Unknown {
				v := n.vote(r.name, addr, own)
				if v.InService {
					want = health.Healthy
				} else {
					want = health.Unhealthy
				}
				if want != own {
					verdicts = append(verdicts, v)
					overridden[k] = true
				}
			}
			// Only verdicts, and their undoing, touch the pool: other
			// members' health is the checker's alone.
			if overridden[k] || n.overridden[k] {
				if h := poolHealth(want); ep.Health() != h {
					r.pool.SetHealth(addr, h)
				}
			}
		}
		view.Pools[r.name] = local
	}
	slices.SortFunc(verdicts, func(a, b Verdict) int {
		return cmpString(a.Pool+" "+a.Member, b.Pool+" "+b.Member)
	})
	n.verdicts, n.quorum, n.overridden = verdicts, quorum, overridden
	return view
}

// vote counts the nodes' verdicts on a member: this node's own, and that
// of every live node whose view has one.
func (n *clusterNode) vote(pool string, addr netip.AddrPort, own health.State) Verdict {
	v := Verdict{Pool: pool, Member: addr.String(), Local: own, Voters: 1}
	if own == health.Unhealthy {
		v.Failing = 1
	}
	for _, view := range n.views {
		switch view.Pools[pool][v.Member] {
		case health.Healthy:
			v.Voters++
		case health.Unhealthy:
			v.Voters++
			v.Failing++
		}
	}
	v.InService = v.Failing < v.Voters/2+1
	return v
}

func poolHealth(s health.State) balancer.Health {
	switch s {
	case health.Healthy:
		return balancer.Healthy
	case health.Unhealthy:
		return balancer.Unhealthy
	}
	return balancer.HealthUnknown
}

// subscribe makes every running checker's events kick the evaluation, so
// a verdict is applied right after the checker's own transition.
func (n *clusterNode) subscribe(refs []poolRef) {
	live := make(map[*health.Checker]bool, len(refs))
	for _, r := range refs {
		live[r.checker] = true
		if _, ok := n.subs[r.checker]; !ok {
			n.subs[r.checker] = r.checker.Subscribe(func(health.Event) { n.poke() })
		}
	}
	for c, unsub := range n.subs {
		if !live[c] {
			unsub()
			delete(n.subs, c)
		}
	}
}

// status returns the cluster part of /status.
func (n *clusterNode) status() *ClusterStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := &ClusterStatus{
		Node: n.opts.Node, Prefix: n.opts.Prefix, ConfigRevision: n.applied,
		RejectedRevision: n.rejected, RejectedError: n.rejectErr,
		QuorumEject: n.quorum, Verdicts: slices.Clone(n.verdicts),
		Nodes: append(slices.Collect(maps.Keys(n.views)), n.opts.Node),
	}
	slices.Sort(st.Nodes)
	return st
}
