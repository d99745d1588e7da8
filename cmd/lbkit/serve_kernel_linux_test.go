package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/lbkit/lbkit/internal/testlog"
)

// TestServeIPLB runs lbkit serve with an iplb (nftables NAT) listener
// inside a balancer namespace of a lab: clients reach both backends
// through the VIP, /status reports the listener, and SIGTERM removes the
// nftables table before the process exits 0.
func TestServeIPLB(t *testing.T) {
	netlab.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds and runs the binary in a lab")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nft not installed (scripts/test.sh installs nftables)")
		}
		t.Skip("nft not installed")
	}
	bin := buildLbkit(t)
	lab, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	p := netip.MustParsePrefix
	client, err := lab.AddHost("client", p("198.18.1.2/24"))
	require.NoError(t, err)
	bal, err := lab.AddHost("bal", p("198.18.1.1/24"), p("198.18.2.1/24"))
	require.NoError(t, err)
	require.NoError(t, bal.Sysctl("net.ipv4.ip_forward", "1"))
	require.NoError(t, bal.AddAddr(p("198.19.0.10/32"), "lo"))
	require.NoError(t, client.AddRoute(p("198.19.0.0/24"), netip.MustParseAddr("198.18.1.1")))
	var members []string
	for i := range 2 {
		name := fmt.Sprintf("be%d", i+1)
		h, err := lab.AddHost(name, p(fmt.Sprintf("198.18.2.%d/24", 11+i)))
		require.NoError(t, err)
		require.NoError(t, h.AddRoute(p("0.0.0.0/0"), netip.MustParseAddr("198.18.2.1")))
		ln, err := h.Listen("tcp", fmt.Sprintf("198.18.2.%d:8080", 11+i))
		require.NoError(t, err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		members = append(members, ln.Addr().String())
	}

	file := filepath.Join(t.TempDir(), "lbkit.yaml")
	require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf(`
admin: {addr: 127.0.0.1:9900}
shutdown_timeout: 2s
pools:
  - name: lab
    policy: maglev
    members: [{addr: %s}, {addr: %s}]
    health: {type: tcp, interval: 200ms}
listeners:
  - {name: nat, type: iplb, vip: 198.19.0.10, port: 80, pool: lab}
`, members[0], members[1])), 0o644))

	var out testlog.Buffer
	cmd := exec.Command(bin, "serve", "-config", file)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, bal.Start(cmd))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("lbkit serve output:\n%s", out.String())
		}
	})
	in := func(h *netlab.Host, timeout time.Duration) *http.Client {
		return &http.Client{Timeout: timeout, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return h.DialContext(ctx, network, addr)
			},
		}}
	}
	admin := in(bal, 2*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := admin.Get("http://127.0.0.1:9900/status")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `"ready": 2`) {
				assert.Contains(t, string(body), `"type": "iplb"`)
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lbkit serve did not become ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	listTables := func() string {
		cmd := exec.Command(nft, "list", "tables")
		var b strings.Builder
		cmd.Stdout, cmd.Stderr = &b, &b
		require.NoError(t, bal.Start(cmd))
		require.NoError(t, cmd.Wait())
		return b.String()
	}
	for !strings.Contains(listTables(), "lbkit_nat") {
		if time.Now().After(deadline) {
			t.Fatal("the iplb table never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := in(client, 5*time.Second)
	seen := map[string]int{}
	for range 40 {
		resp, err := c.Get("http://198.19.0.10/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(body)]++
	}
	assert.Len(t, seen, 2, "both backends reached through the VIP: %v", seen)

	assert.Contains(t, listTables(), "lbkit_nat", "the listener's table is installed")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-done:
		require.NoError(t, err, "exit status")
	case <-time.After(15 * time.Second):
		t.Fatal("lbkit serve did not stop")
	}
	assert.NotContains(t, listTables(), "lbkit_nat", "SIGTERM removes the kernel state")
}
