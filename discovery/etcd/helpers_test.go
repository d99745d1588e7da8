package etcd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// etcdServer is a real etcd server run in-process with
// go.etcd.io/etcd/server/v3/embed on loopback ports the test picked, so
// it can be stopped and started again on the same data and ports.
type etcdServer struct {
	t      *testing.T
	dir    string
	client url.URL
	peer   url.URL
	e      *embed.Etcd
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (embed does
// not take port 0).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var lns []net.Listener
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	ports := freePorts(t, 2)
	s := &etcdServer{
		t:      t,
		dir:    t.TempDir(),
		client: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])},
		peer:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])},
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start starts the server on its data directory and ports and waits
// until it serves.
func (s *etcdServer) start() {
	s.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "lbkit-test"
	cfg.Dir = s.dir
	cfg.ListenClientUrls = []url.URL{s.client}
	cfg.AdvertiseClientUrls = []url.URL{s.client}
	cfg.ListenPeerUrls = []url.URL{s.peer}
	cfg.AdvertisePeerUrls = []url.URL{s.peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	require.NoError(s.t, err)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		s.t.Fatalf("etcd failed: %v", err)
	case <-time.After(30 * time.Second):
		e.Close()
		s.t.Fatal("etcd did not start within 30s")
	}
	s.e = e
}

// stop stops the server; its data stays.
func (s *etcdServer) stop() {
	if s.e != nil {
		start := time.Now()
		s.e.Close()
		s.t.Logf("etcd stopped in %v", time.Since(start))
		s.e = nil
	}
}

// newClient returns a client of endpoint that reconnects quickly and
// is closed when the test ends.
func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 300 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func put(t *testing.T, c *clientv3.Client, key, value string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r, err := c.Put(ctx, key, value)
	require.NoError(t, err)
	return r.Header.Revision
}

func del(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r, err := c.Delete(ctx, key)
	require.NoError(t, err)
	return r.Header.Revision
}

// link is a TCP forwarder on loopback between a client and etcd that
// the test can cut (every connection closed, new ones refused) and
// restore, to lose a client's connection while the server runs on.
type link struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := &link{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.accept)
	t.Cleanup(func() {
		ln.Close()
		l.setCut(true)
		l.wg.Wait()
	})
	return l
}

func (l *link) addr() string { return "http://" + l.ln.Addr().String() }

func (l *link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		cut := l.cut
		l.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", l.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		l.conns[c], l.conns[up] = struct{}{}, struct{}{}
		l.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		l.wg.Go(func() { pipe(up, c) })
		l.wg.Go(func() { pipe(c, up) })
	}
}

// setCut cuts the link (closing every connection) or restores it.
func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			c.Close()
		}
		clear(l.conns)
	}
}

func newPool(t *testing.T, name string) *balancer.Pool {
	t.Helper()
	p, err := balancer.New(balancer.Config{Name: name, Builder: roundrobin.Builder{}, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func members(p *balancer.Pool) []string {
	var out []string
	for _, ep := range p.Snapshot().Members {
		out = append(out, ep.Addr().String())
	}
	return out
}

// waitMembers waits, woken by each snapshot the pool publishes, until its
// members are want; it fails the test after timeout and returns how long
// it waited.
func waitMembers(t *testing.T, p *balancer.Pool, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s := p.Snapshot()
		if slices.Equal(members(p), want) {
			return time.Since(start)
		}
		select {
		case <-s.Changed():
		case <-deadline.C:
			t.Fatalf("after %v: members %v, want %v", timeout, members(p), want)
		}
	}
}
