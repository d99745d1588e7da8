package iplb

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// helperEnv names the namespace (a path under /var/run/netns) and the
// backends a helper process balances; it is set only in the child that
// TestLabControlPlaneCrash starts.
const helperEnv = "LBKIT_IPLB_HELPER"

// TestHelperBalancer is the control plane TestLabControlPlaneCrash kills:
// run in a child process, it serves the service "web" on 198.19.0.10:80,
// prints "ready" and waits to be killed. It does nothing in a normal run.
func TestHelperBalancer(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("iplb: helper process for TestLabControlPlaneCrash")
	}
	path, backends, _ := strings.Cut(spec, ";")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{NetNS: int(f.Fd()), Logger: quietLogger(), Services: []Service{crashService(t, backends)}})
	if err != nil {
		t.Fatal(err)
	}
	go b.Serve(context.Background())
	if err := b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	select {} // until SIGKILL
}

// crashService is the service of the crash test, over the
// comma-separated backends.
func crashService(t testing.TB, backends string) Service {
	var bs []balancer.Backend
	for _, a := range strings.Split(backends, ",") {
		bs = append(bs, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	p := balancer.MustNew(balancer.Config{Builder: balancer.BuilderFunc(func([]balancer.Weighted) balancer.Picker {
		return balancer.ErrPicker(balancer.ErrNoBackend)
	}), Logger: quietLogger()})
	if err := p.Set(bs); err != nil {
		t.Fatal(err)
	}
	return Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Key: flowKey, Pool: p}
}

// TestLabControlPlaneCrash kills the balancer's process with SIGKILL
// while a client opens connection after connection and holds one open:
// the table outlives the process (forwarding goes on, frozen: no health
// updates), and a new balancer adopts it by replacing it in one batch.
// Not one connection fails, and the open one carries on throughout.
func TestLabControlPlaneCrash(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("in the helper")
	}
	l := newLab(t)
	var backends []string
	for _, tb := range l.backends {
		backends = append(backends, tb.addr(false, backendPort).String())
	}
	spec := filepath.Join("/var/run/netns", l.bal.NSName()) + ";" + strings.Join(backends, ",")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBalancer$")
	cmd.Env = append(os.Environ(), helperEnv+"="+spec)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		require.True(t, ok, "the helper balancer failed")
	case <-time.After(30 * time.Second):
		t.Fatal("the helper balancer did not start")
	}

	vip := netip.AddrPortFrom(vip4, 80)
	open := l.rawDial(t, vip)
	name, err := open.get()
	require.NoError(t, err)
	// New connections, one after another, until told to stop (at most
	// 30 s or 20,000 of them).
	var done, failed, stop atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		c := l.httpClient(false)
		deadline := time.Now().Add(30 * time.Second)
		for stop.Load() == 0 && done.Load() < 20000 && time.Now().Before(deadline) {
			resp, err := c.Get(url(vip))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				failed.Add(1)
			}
			done.Add(1)
		}
	})
	waitFor := func(n int64) {
		t.Helper()
		target := done.Load() + n
		require.Eventually(t, func() bool { return done.Load() >= target }, 20*time.Second, time.Millisecond)
	}
	waitFor(50)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	assert.Error(t, cmd.Wait(), "killed")
	waitFor(100) // no control plane at all
	got, err := open.get()
	require.NoError(t, err, "the open connection carries on without a control plane")
	assert.Equal(t, name, got)

	// A new process adopts the table: Serve replaces it in one batch.
	b := serveBalancer(t, Config{NetNS: int(l.bal.NS()), Logger: quietLogger(), Services: []Service{crashService(t, strings.Join(backends, ","))}})
	waitFor(100)
	stop.Store(1)
	wg.Wait()
	got, err = open.get()
	require.NoError(t, err, "the open connection carries on through the adoption")
	assert.Equal(t, name, got)
	assert.Zero(t, failed.Load(), "of %d new connections", done.Load())
	st, err := b.Stats()
	require.NoError(t, err)
	require.Len(t, st, 1)
	t.Logf("%d new connections, %d failed; the adopting balancer counted %d new flows", done.Load(), failed.Load(), st[0].Flows)
}
