package l2lb

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/internal/netlab"
)

// Environment of a child balancer process (runChild).
const (
	childEnv     = "L2LB_TEST_CHILD"
	childNSEnv   = "L2LB_TEST_NETNS"
	childPinEnv  = "L2LB_TEST_PINDIR"
	childBackEnv = "L2LB_TEST_BACKENDS"
)

// runChild runs a balancer as a child process of the test binary when
// the environment asks for one, and reports whether it did: it enters
// the named namespace, serves the lab's IPv4 VIP over the listed
// backends with the pin directory given, prints "ready" once synced and
// runs until killed (two minutes at most).
func runChild() bool {
	if os.Getenv(childEnv) == "" {
		return false
	}
	if err := child(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

func child() error {
	runtime.LockOSThread()
	ns, err := netns.GetFromName(os.Getenv(childNSEnv))
	if err != nil {
		return err
	}
	if err := netns.Set(ns); err != nil {
		return err
	}
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	var bs []balancer.Backend
	for _, a := range strings.Split(os.Getenv(childBackEnv), ",") {
		bs = append(bs, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	if err := pool.Set(bs); err != nil {
		return err
	}
	b, err := New(Config{
		Interface: "eth0", Mode: AttachGeneric, PinDir: os.Getenv(childPinEnv),
		Services: []Service{{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	go b.Serve(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Sync(ctx); err != nil {
		return err
	}
	fmt.Println("ready")
	time.Sleep(2 * time.Minute)
	return nil
}

// pinLab is a client, a balancer host with the VIP on eth0 and backends,
// with no balancer running, and a pin directory of the test's own that is
// removed (detaching a pinned program) before the lab is torn down.
type pinLab struct {
	dsrLab
	pinDir string
}

func newPinLab(t *testing.T, nBackends int) *pinLab {
	t.Helper()
	netlab.RequireRoot(t)
	lab, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	l := &pinLab{dsrLab: dsrLab{lab: lab}}
	l.client, err = lab.AddHost("client")
	require.NoError(t, err)
	l.lb, err = lab.AddHost("lb")
	require.NoError(t, err)
	require.NoError(t, l.lb.AddAddr(netip.PrefixFrom(labVIP4, 32), "eth0"))
	for i := range nBackends {
		h, err := lab.AddHost(fmt.Sprintf("be%d", i+1))
		require.NoError(t, err)
		setupBackend(t, h)
		l.kill = append(l.kill, serveHTTP(t, h))
		l.backends = append(l.backends, h)
	}
	l.pinDir = filepath.Join(bpffsRoot, fmt.Sprintf("lbkit-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	require.NoError(t, preparePinDir(l.pinDir))
	t.Cleanup(func() { assert.NoError(t, removePins(l.pinDir)) })
	return l
}

func (l *pinLab) backendList() string {
	var s []string
	for i := range l.backends {
		s = append(s, l.backendAddr(i).String())
	}
	return strings.Join(s, ",")
}

// startChild starts a balancer process and waits until it has synced.
func (l *pinLab) startChild(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childNSEnv+"="+l.lb.NSName(), childPinEnv+"="+l.pinDir, childBackEnv+"="+l.backendList())
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		s.Scan()
		line <- s.Text()
		for s.Scan() {
		}
	}()
	select {
	case got := <-line:
		require.Equal(t, "ready", got)
	case <-time.After(40 * time.Second):
		t.Fatal("child balancer did not sync in 40s")
	}
	return cmd
}

// xdpProgID returns the id of the XDP program on the balancer's eth0, 0
// if none.
func (l *pinLab) xdpProgID(t *testing.T) uint32 {
	t.Helper()
	lk, err := l.lb.Handle().LinkByName("eth0")
	require.NoError(t, err)
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

// load is bounded client traffic through the VIP: one loop opening a
// connection per request, and keep-alive connections that must keep
// their backend.
type load struct {
	ok, failed atomic.Int64
	moved      atomic.Int64 // keep-alive requests answered by another backend
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []string
}

func (ld *load) fail(err error) {
	ld.failed.Add(1)
	ld.mu.Lock()
	if len(ld.errs) < 5 {
		ld.errs = append(ld.errs, err.Error())
	}
	ld.mu.Unlock()
}

func startLoad(t *testing.T, l *dsrLab, keepAlive int) *load {
	t.Helper()
	ld := &load{stop: make(chan struct{})}
	var conns []*conn
	var first []string
	for range keepAlive {
		c := l.dial(t, labVIP4)
		n, err := c.get("/name")
		require.NoError(t, err)
		conns = append(conns, c)
		first = append(first, n)
	}
	deadline := time.Now().Add(60 * time.Second)
	for i, c := range conns {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for n := 0; n < 100000 && time.Now().Before(deadline); n++ {
				select {
				case <-ld.stop:
					return
				default:
				}
				got, err := c.get("/name")
				switch {
				case err != nil:
					ld.fail(err)
					return
				case got != first[i]:
					ld.moved.Add(1)
				default:
					ld.ok.Add(1)
				}
			}
		}()
	}
	ld.wg.Add(1)
	go func() {
		defer ld.wg.Done()
		for n := 0; n < 100000 && time.Now().Before(deadline); n++ {
			select {
			case <-ld.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			nc, err := l.client.DialContext(ctx, "tcp", netip.AddrPortFrom(labVIP4, 80).String())
			cancel()
			if err != nil {
				ld.fail(err)
				continue
			}
			c := &conn{c: nc, r: bufio.NewReader(nc)}
			if _, err := c.get("/name"); err != nil {
				ld.fail(err)
			} else {
				ld.ok.Add(1)
			}
			nc.Close()
		}
	}()
	return ld
}

// waitOK waits until the load has n more successful requests than now.
func (ld *load) waitOK(t *testing.T, n int64) {
	t.Helper()
	target := ld.ok.Load() + n
	require.Eventually(t, func() bool { return ld.ok.Load() >= target }, 20*time.Second, 5*time.Millisecond)
}

func (ld *load) end() {
	close(ld.stop)
	ld.wg.Wait()
}

// TestLabSIGKILLHitless kills the balancer process with SIGKILL under
// client load and starts a new one: the pinned program keeps forwarding
// while no control plane runs, the new process adopts it, and no
// connection fails or changes backend.
func TestLabSIGKILLHitless(t *testing.T) {
	l := newPinLab(t, 3)
	first := l.startChild(t)
	prog := l.xdpProgID(t)
	require.NotZero(t, prog)

	ld := startLoad(t, &l.dsrLab, 8)
	ld.waitOK(t, 200)
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	first.Wait()
	// No control plane: the pinned program still forwards.
	assert.Equal(t, prog, l.xdpProgID(t), "program still attached after SIGKILL")
	ld.waitOK(t, 500)
	l.startChild(t)
	assert.Equal(t, prog, l.xdpProgID(t), "the same program version is adopted, not replaced")
	ld.waitOK(t, 200)
	ld.end()
	t.Logf("requests ok %d, failed %d, moved %d", ld.ok.Load(), ld.failed.Load(), ld.moved.Load())
	assert.Zero(t, ld.failed.Load(), "failed requests: %v", ld.errs)
	assert.Zero(t, ld.moved.Load(), "keep-alive requests answered by another backend")
}

// TestLabLeaveAdoptMigrate stops a balancer with Leave, checks that the
// data plane forwards without it, adopts it with a bigger connection
// table (maps migrated, program replaced in place), adopts that again
// unchanged (program kept), and Closes: the pins and the program go.
func TestLabLeaveAdoptMigrate(t *testing.T) {
	l := newPinLab(t, 3)
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	t.Cleanup(func() { pool.Close() })
	for i := range l.backends {
		require.NoError(t, pool.Add(balancer.Backend{Addr: l.backendAddr(i)}))
	}
	cfg := Config{
		Interface: "eth0", Mode: AttachGeneric, PinDir: l.pinDir, ConnTableSize: 1024,
		Services: []Service{{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}},
	}
	serve := func(cfg Config) (*Balancer, chan error) {
		var b *Balancer
		require.NoError(t, l.lb.Do(func() (err error) { b, err = New(cfg); return err }))
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, b.Sync(ctx))
		return b, served
	}
	b1, served := serve(cfg)
	prog1 := l.xdpProgID(t)
	var conns []*conn
	var names []string
	for range 12 {
		c := l.dial(t, labVIP4)
		n, err := c.get("/name")
		require.NoError(t, err)
		conns, names = append(conns, c), append(names, n)
	}
	check := func(when string) {
		t.Helper()
		for i, c := range conns {
			n, err := c.get("/name")
			require.NoError(t, err, when)
			require.Equal(t, names[i], n, "%s: connection %d keeps its backend", when, i)
		}
	}
	before, err := b1.ConnTable()
	require.NoError(t, err)
	require.NoError(t, b1.Leave(context.Background()))
	require.NoError(t, <-served)
	require.Equal(t, prog1, l.xdpProgID(t), "Leave keeps the program attached")
	check("no control plane")
	assert.Equal(t, "ready", func() string { _ = l.name(t, labVIP4); return "ready" }(), "new connections while no control plane runs")

	// Adopt with a bigger connection table: the maps are migrated and
	// the program replaced through the link.
	cfg.ConnTableSize = 4096
	b2, served := serve(cfg)
	prog2 := l.xdpProgID(t)
	assert.NotEqual(t, prog1, prog2, "migrated maps need the new program")
	check("after migration")
	after, err := b2.ConnTable()
	require.NoError(t, err)
	assert.Equal(t, 4096, after.Size)
	assert.GreaterOrEqual(t, after.Entries, before.Entries, "connection table migrated")
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir, "conns"), nil)
	require.NoError(t, err)
	assert.EqualValues(t, 4096, m.MaxEntries(), "the new maps are pinned")
	m.Close()
	addrs, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir, "backend_addrs"), nil)
	require.NoError(t, err)
	var ba l2lbBackendAddr
	known := 0
	for id := range uint32(8) {
		require.NoError(t, addrs.Lookup(id, &ba))
		if ba.Family != 0 {
			known++
		}
	}
	addrs.Close()
	assert.Equal(t, len(l.backends), known, "the migrated maps still name each backend id's member")
	require.NoError(t, b2.Leave(context.Background()))
	require.NoError(t, <-served)

	// The same version and sizes: the pinned program is kept.
	b3, served := serve(cfg)
	assert.Equal(t, prog2, l.xdpProgID(t))
	check("after adoption")
	require.NoError(t, b3.Close())
	require.NoError(t, <-served)
	assert.Zero(t, l.xdpProgID(t), "Close detaches")
	_, err = os.Stat(l.pinDir)
	assert.True(t, os.IsNotExist(err), "Close removes the pins")
	_, err = link.LoadPinnedLink(filepath.Join(l.pinDir, linkPin), nil)
	assert.Error(t, err)

	// Unpinned: nothing is pinned.
	cfg.Unpinned = true
	b4, served := serve(cfg)
	_, err = os.Stat(l.pinDir)
	assert.True(t, os.IsNotExist(err), "Unpinned pins nothing")
	require.NoError(t, b4.Close())
	require.NoError(t, <-served)
}

// TestLabAdoptDriverMode: in driver mode the attached program is the
// entry point bound to the interface; a new balancer adopting it keeps
// it (same version) and still passes VLAN-tagged frames.
func TestLabAdoptDriverMode(t *testing.T) {
	l := newPinLab(t, 1)
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	t.Cleanup(func() { pool.Close() })
	require.NoError(t, pool.Add(balancer.Backend{Addr: l.backendAddr(0)}))
	cfg := Config{Interface: "eth0", Mode: AttachDriver, PinDir: l.pinDir,
		Services: []Service{{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}}}
	serve := func() (*Balancer, chan error) {
		var b *Balancer
		require.NoError(t, l.lb.Do(func() (err error) { b, err = New(cfg); return err }))
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, b.Sync(ctx))
		return b, served
	}
	b1, served := serve()
	prog := l.xdpProgID(t)
	require.NoError(t, b1.Leave(context.Background()))
	require.NoError(t, <-served)
	b2, served := serve()
	assert.Equal(t, AttachDriver, b2.Mode())
	assert.Equal(t, prog, l.xdpProgID(t), "the bound program is kept")
	l.bal = b2
	assert.EqualValues(t, 1, l.sendSYN(t, 40001, 0), "an untagged SYN is balanced")
	assert.EqualValues(t, 0, l.sendSYN(t, 40002, 5), "a tagged SYN passes")
	require.NoError(t, b2.Close())
	require.NoError(t, <-served)
}
