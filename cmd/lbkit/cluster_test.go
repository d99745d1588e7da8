//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/lbkit/lbkit/internal/daemon"
	"github.com/lbkit/lbkit/internal/etcdtest"
	"github.com/lbkit/lbkit/internal/testlog"
	"github.com/lbkit/lbkit/internal/testnet"
)

// TestServeCluster is issue 14's three-node cluster: three lbkit serve
// processes of a real build, on loopback, with a real etcd (embedded in
// the test). A configuration written to etcd reaches every node (each
// /status shows the same etcd revision); a broken one is rejected by each
// node, which keeps serving; with cluster.quorum_eject a member whose
// health check fails for one node only stays in service on every node,
// and one that fails for two of three is taken out on all three, the
// third included. lbkit status shows each node's revision and view.
func TestServeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildLbkit(t)
	endpoint := etcdtest.Start(t)
	c := etcdtest.Client(t, endpoint)
	const prefix = "/lbkit-test"
	good := clusterBackend(t, nil)
	failFor := &pidSet{}
	picky := clusterBackend(t, failFor) // fails the checks of the nodes in failFor
	extra := clusterBackend(t, nil)

	cfg := func(members ...string) string {
		s := "cluster: {quorum_eject: true}\npools:\n  - name: web\n    policy: maglev\n    members:\n"
		for _, m := range members {
			s += "      - addr: " + m + "\n"
		}
		return s + "    health: {type: http, path: /healthz, interval: 100ms, timeout: 2s, rise: 1, fall: 1}\nlisteners: []\n"
	}
	put := func(value string) int64 {
		t.Helper()
		r, err := c.Put(t.Context(), daemon.ConfigKey(prefix), value)
		require.NoError(t, err)
		return r.Header.Revision
	}
	rev1 := put(cfg(good, picky))

	admins := testnet.FreeAddrs(t, 3)
	nodes := make([]*clusterProc, 3)
	for i := range nodes {
		nodes[i] = startNode(t, bin, fmt.Sprintf("n%d", i+1), admins[i], "-etcd", endpoint, "-etcd-prefix", prefix)
	}
	for _, n := range nodes {
		n.wait(t, "revision 1 and 2 ready members", func(st daemon.Status) bool {
			return st.Cluster.ConfigRevision == rev1 && readyCount(st) == 2
		})
	}

	// A new configuration reaches every node: the same revision in each
	// /status.
	rev2 := put(cfg(good, picky, extra))
	for _, n := range nodes {
		n.wait(t, "revision 2 with 3 ready members", func(st daemon.Status) bool {
			return st.Cluster.ConfigRevision == rev2 && readyCount(st) == 3 && len(st.Cluster.Nodes) == 3
		})
	}
	// A broken one is rejected by each node; revision 2 keeps serving.
	rev3 := put("pools: [{name: web, members: [{addr: nowhere}]}]\n")
	for _, n := range nodes {
		st := n.wait(t, "revision 3 rejected", func(st daemon.Status) bool { return st.Cluster.RejectedRevision == rev3 })
		assert.Equal(t, rev2, st.Cluster.ConfigRevision)
		assert.Contains(t, st.Cluster.RejectedError, fmt.Sprintf("etcd:%s@%d:1:", daemon.ConfigKey(prefix), rev3))
		assert.Equal(t, 3, readyCount(st))
	}

	// picky fails n1's checks only: n1 sees it failing, but with no
	// quorum keeps it in service, as do n2 and n3.
	failFor.set(nodes[0].pid())
	nodes[0].wait(t, "n1 keeps picky in service against its own check", func(st daemon.Status) bool {
		m, ok := member(st, picky)
		return ok && m.Check != nil && m.Check.State.String() == "unhealthy" && m.Ready && hasVerdict(st, picky, true)
	})
	for _, n := range nodes {
		st := n.status(t)
		m, _ := member(st, picky)
		assert.True(t, m.Ready, "%s: picky in service", n.name)
		assert.Equal(t, 3, readyCount(st), n.name)
	}

	// picky fails for n1 and n2: a quorum; every node takes it out, n3
	// too though its own check passes.
	failFor.set(nodes[0].pid(), nodes[1].pid())
	for _, n := range nodes {
		n.wait(t, "picky out of service", func(st daemon.Status) bool {
			m, ok := member(st, picky)
			return ok && !m.Ready && readyCount(st) == 2
		})
	}
	st := nodes[2].status(t)
	m, _ := member(st, picky)
	assert.Equal(t, "healthy", m.Check.State.String(), "n3's own check passes")
	assert.True(t, hasVerdict(st, picky, false))

	// lbkit status: every node, its revision and its view of each member.
	code, out, errOut := runLbkit(t, bin, "status", "-etcd", endpoint, "-etcd-prefix", prefix)
	require.Zero(t, code, errOut)
	t.Logf("lbkit status:\n%s", out)
	assert.Contains(t, out, fmt.Sprintf("revision %d", rev3))
	for _, name := range []string{"n1", "n2", "n3"} {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%s\s+%d\s+%d: `, name, rev2, rev3), out)
	}
	assert.Regexp(t, fmt.Sprintf(`(?m)^web\s+%s\s+unhealthy\s+unhealthy\s+healthy\s*$`, regexpQuote(picky)), out)
	assert.Regexp(t, fmt.Sprintf(`(?m)^web\s+%s\s+healthy\s+healthy\s+healthy\s*$`, regexpQuote(good)), out)

	// A node that dies (no chance to revoke its lease) leaves when its
	// lease expires (5 s): its view, and its vote, go.
	require.NoError(t, nodes[2].cmd.Process.Kill())
	<-nodes[2].exited
	for _, n := range nodes[:2] {
		n.wait(t, "n3 gone", func(st daemon.Status) bool { return slices.Equal(st.Cluster.Nodes, []string{"n1", "n2"}) })
	}
	// n1 and n2 still fail picky: two of two, still out.
	st = nodes[0].status(t)
	m, _ = member(st, picky)
	assert.False(t, m.Ready)
}

func regexpQuote(s string) string { return strings.ReplaceAll(s, ".", `\.`) }

func readyCount(st daemon.Status) int {
	if len(st.Pools) != 1 {
		return -1
	}
	return st.Pools[0].Ready
}

func member(st daemon.Status, addr string) (daemon.MemberStatus, bool) {
	for _, p := range st.Pools {
		for _, m := range p.Members {
			if m.Addr == addr {
				return m, true
			}
		}
	}
	return daemon.MemberStatus{}, false
}

func hasVerdict(st daemon.Status, addr string, inService bool) bool {
	for _, v := range st.Cluster.Verdicts {
		if v.Member == addr && v.InService == inService {
			return true
		}
	}
	return false
}

// clusterProc is one lbkit serve node.
type clusterProc struct {
	name, admin string
	cmd         *exec.Cmd
	out         *testlog.Buffer
	exited      chan struct{} // closed when the process has exited
	err         error         // Wait's error, once exited is closed
}

func startNode(t *testing.T, bin, name, admin string, args ...string) *clusterProc {
	t.Helper()
	n := &clusterProc{name: name, admin: admin, out: &testlog.Buffer{}, exited: make(chan struct{})}
	n.cmd = exec.Command(bin, append([]string{"serve", "-node", name, "-admin", admin}, args...)...)
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	require.NoError(t, n.cmd.Start())
	go func() {
		n.err = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, n.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/status")
		if err == nil {
			resp.Body.Close()
			return n
		}
		select {
		case <-n.exited:
			t.Fatalf("%s exited: %v\n%s", name, n.err, n.out.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "%s did not start: %v\n%s", name, err, n.out.String())
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *clusterProc) pid() int { return n.cmd.Process.Pid }

func (n *clusterProc) stop(t *testing.T) {
	select {
	case <-n.exited:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
	}
}

func (n *clusterProc) status(t *testing.T) daemon.Status {
	t.Helper()
	resp, err := http.Get("http://" + n.admin + "/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st daemon.Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	require.NotNil(t, st.Cluster, "%s: no cluster in /status", n.name)
	return st
}

// wait polls the node's /status until cond holds.
func (n *clusterProc) wait(t *testing.T, what string, cond func(daemon.Status) bool) daemon.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := n.status(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("%s: timed out waiting for %s; /status:\n%s", n.name, what, b)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// pidSet is a set of process IDs, safe for concurrent use.
type pidSet struct {
	mu   sync.Mutex
	pids map[int]bool
}

func (s *pidSet) set(pids ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pids = make(map[int]bool)
	for _, p := range pids {
		s.pids[p] = true
	}
}

type connKey struct{}

// clusterBackend starts an HTTP backend whose /healthz fails (503) for
// connections from the processes in failFor (nil: never). The nodes all
// probe from 127.0.0.1, so the backend tells them apart by the process
// that owns the connection's other end, found in /proc: the node with a
// bad path to this backend, on one machine.
func clusterBackend(t *testing.T, failFor *pidSet) string {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, _ := r.Context().Value(connKey{}).(net.Conn); failFor != nil && c != nil && failFor.ownsPeer(c) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// ownsPeer reports whether a process of the set owns the other end of a
// loopback TCP connection: the kernel's socket table (sock_diag, through
// netlink) gives that socket's inode, and a process with a descriptor on
// the inode owns it. Only the set's processes are searched.
func (s *pidSet) ownsPeer(c net.Conn) bool {
	s.mu.Lock()
	pids := slices.Collect(maps.Keys(s.pids))
	s.mu.Unlock()
	if len(pids) == 0 {
		return false
	}
	sock, err := netlink.SocketGet(c.RemoteAddr(), c.LocalAddr())
	if err != nil {
		return false
	}
	want := fmt.Sprintf("socket:[%d]", sock.INode)
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join(dir, fd.Name())); l == want {
				return true
			}
		}
	}
	return false
}
