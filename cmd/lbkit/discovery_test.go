package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/testnet"
)

// TestServeMembersFromFile: lbkit serve, from a real build, runs a pool
// whose members come from a members file (discovery: file); while clients
// send requests through its HTTP listener, writing the file adds a member
// (probed, then served) and removes one; no request fails.
func TestServeMembersFromFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildLbkit(t)
	be := testBackends(t, 3)
	addrs := testnet.FreeAddrs(t, 2)
	dir := t.TempDir()
	members := filepath.Join(dir, "web-members.yaml")
	writeFile := func(addrs ...string) {
		var b strings.Builder
		for _, a := range addrs {
			fmt.Fprintf(&b, "- addr: %s\n", a)
		}
		require.NoError(t, os.WriteFile(members+".tmp", []byte(b.String()), 0o644))
		require.NoError(t, os.Rename(members+".tmp", members))
	}
	writeFile(be[0], be[1])
	file := filepath.Join(dir, "lbkit.yaml")
	require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf(`
admin: {addr: %s}
shutdown_timeout: 5s
pools:
  - name: web
    discovery:
      file: {path: web-members.yaml}
    health: {type: http, path: /healthz, interval: 200ms, timeout: 1s, fall: 1, rise: 1}
listeners:
  - {name: proxy, type: http, addr: %s, pool: web, max_tries: 3}
`, addrs[0], addrs[1])), 0o644))

	s := startServeFile(t, bin, file, addrs[0], "-watch=false")
	waitHealthy(t, s, 2)

	c := &client{p: serveParams{HTTP: addrs[1]}, errs: make(chan string, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { c.run(ctx, "http") })
	}
	waitRequests := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for start := c.ok.Load(); c.ok.Load() < start+n; time.Sleep(10 * time.Millisecond) {
			require.True(t, time.Now().Before(deadline), "requests stalled")
		}
	}
	waitRequests(50)
	writeFile(be[0], be[1], be[2]) // a member joins
	waitHealthy(t, s, 3)
	waitServed(t, s, be[2])
	waitRequests(50)
	writeFile(be[1], be[2]) // a member leaves
	waitHealthy(t, s, 2)
	waitRequests(50)
	cancel()
	wg.Wait()
	close(c.errs)
	for e := range c.errs {
		t.Errorf("failed request: %s", e)
	}
	assert.Zero(t, c.fail.Load(), "failed requests")
	t.Logf("%d requests, %d failed", c.ok.Load(), c.fail.Load())
	var addrsNow []string
	pools, _ := s.status()["pools"].([]any)
	require.Len(t, pools, 1)
	for _, m := range pools[0].(map[string]any)["members"].([]any) {
		addrsNow = append(addrsNow, m.(map[string]any)["addr"].(string))
	}
	assert.ElementsMatch(t, []string{be[1], be[2]}, addrsNow)
}

// waitServed waits until /status counts requests to the member addr of
// pool web.
func waitServed(t *testing.T, s *served, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pools, _ := s.status()["pools"].([]any)
		for _, p := range pools {
			for _, m := range p.(map[string]any)["members"].([]any) {
				mm := m.(map[string]any)
				if n, _ := mm["requests"].(float64); mm["addr"] == addr && n > 0 {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("member %s served no request", addr)
}
