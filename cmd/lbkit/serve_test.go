package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/testlog"
	"github.com/lbkit/lbkit/internal/testnet"
)

// serveConfig is the configuration of the serve tests: one pool, "web",
// feeding an HTTP proxy, a redirect, a DNS and a TCP listener at once.
var serveConfig = template.Must(template.New("cfg").Parse(`
admin: {addr: {{.Admin}}}
shutdown_timeout: 5s
access_log: {path: {{.AccessLog}}, format: json}
pools:
  - name: web
    policy: roundrobin
    members:
{{- range .Members}}
      - addr: {{.}}
{{- end}}
    health: {type: http, path: /healthz, interval: 200ms, timeout: 1s, fall: 1, rise: 1}
listeners:
  - {name: proxy, type: http, addr: {{.HTTP}}, pool: web, max_tries: 3}
  - {name: mirror, type: redirect, addr: {{.Redirect}}, pool: web}
  - {name: tcp, type: tcp, addr: {{.TCP}}, pool: web}
  - name: names
    type: dns
    addr: {{.DNS}}
    zones:
      - origin: example.test.
        records: |
          @ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300
          @ 3600 IN NS ns1
          ns1 3600 IN A 127.0.0.1
    services:
      - {name: www.example.test., pool: web}
{{.Extra}}
`))

type serveParams struct {
	Admin, HTTP, Redirect, TCP, DNS string
	AccessLog                       string
	Members                         []string
	Extra                           string
}

// testBackends starts n HTTP backends that answer their name after a
// short pause (so requests are in flight during reloads and stops).
func testBackends(t *testing.T, n int) []string {
	var addrs []string
	for i := range n {
		name := fmt.Sprintf("b%d", i+1)
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(2 * time.Millisecond)
			io.WriteString(w, name)
		})
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		addrs = append(addrs, srv.Listener.Addr().String())
	}
	return addrs
}

type served struct {
	t    *testing.T
	cmd  *exec.Cmd
	file string
	p    serveParams
	out  *testlog.Buffer
	done chan error
}

func (s *served) write(p serveParams) {
	s.t.Helper()
	var b bytes.Buffer
	require.NoError(s.t, serveConfig.Execute(&b, p))
	tmp := s.file + ".tmp"
	require.NoError(s.t, os.WriteFile(tmp, b.Bytes(), 0o644))
	require.NoError(s.t, os.Rename(tmp, s.file))
}

func (s *served) writeRaw(text string) {
	s.t.Helper()
	require.NoError(s.t, os.WriteFile(s.file, []byte(text), 0o644))
}

func (s *served) status() map[string]any {
	s.t.Helper()
	resp, err := http.Get("http://" + s.p.Admin + "/status")
	require.NoError(s.t, err)
	defer resp.Body.Close()
	var st map[string]any
	require.NoError(s.t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

func (s *served) reloads() []any {
	st := s.status()
	r, _ := st["reloads"].([]any)
	return r
}

// waitReloads waits until /status lists n reloads (the start included).
func (s *served) waitReloads(n int) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if r := s.reloads(); len(r) >= n {
			return r[n-1].(map[string]any)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("no reload %d; output:\n%s", n, s.out.String())
	return nil
}

func startServe(t *testing.T, bin string, p serveParams, extraArgs ...string) *served {
	t.Helper()
	file := filepath.Join(t.TempDir(), "lbkit.yaml")
	s := &served{t: t, file: file}
	s.write(p)
	s = startServeFile(t, bin, file, p.Admin, extraArgs...)
	s.p = p
	return s
}

// client drives the four listeners in a loop and counts failures. Each
// request takes the read lock, so a test that changes a listener's address
// takes the write lock between the reload and the switch of address: no
// request then starts on an address being retired, and requests in flight
// must finish on the old one.
type client struct {
	mu       sync.RWMutex
	p        serveParams
	ok, fail atomic.Int64
	errs     chan string
}

func (c *client) params() serveParams {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.p
}

func (c *client) run(ctx context.Context, kind string) {
	hc := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for {
		c.mu.RLock()
		if ctx.Err() != nil { // checked under the lock: the test stops clients with it held
			c.mu.RUnlock()
			return
		}
		err := c.once(hc, kind, c.p)
		c.mu.RUnlock()
		if err != nil {
			c.fail.Add(1)
			select {
			case c.errs <- kind + ": " + err.Error():
			default:
			}
		} else {
			c.ok.Add(1)
		}
	}
}

func (c *client) once(hc *http.Client, kind string, p serveParams) error {
	switch kind {
	case "http", "tcp":
		addr := p.HTTP
		if kind == "tcp" {
			addr = p.TCP
		}
		resp, err := hc.Get("http://" + addr + "/")
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "b") {
			return fmt.Errorf("status %d body %q", resp.StatusCode, body)
		}
	case "redirect":
		resp, err := hc.Get("http://" + p.Redirect + "/x")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), "http://127.0.0.1:") {
			return fmt.Errorf("status %d location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	case "dns":
		m := new(dns.Msg)
		m.SetQuestion("www.example.test.", dns.TypeA)
		r, err := dns.Exchange(m, p.DNS)
		if err != nil {
			return err
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			return fmt.Errorf("rcode %d, %d answers", r.Rcode, len(r.Answer))
		}
	}
	return nil
}

// TestServeReloads is issue 13's end-to-end test: lbkit serve, from a real
// build, with an HTTP, a redirect, a DNS and a TCP listener sharing one
// pool, driven by clients while it is reloaded ten times (valid and broken
// files alternating, members added and removed, a listener's port changed):
// no request fails, unchanged members keep their health state, /status
// shows each reload's outcome, /metrics passes promtool and counts the
// requests, and SIGTERM under load lets in-flight requests finish.
func TestServeReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildLbkit(t)
	be := testBackends(t, 4)
	addrs := testnet.FreeAddrs(t, 6)
	logFile := filepath.Join(t.TempDir(), "access.log")
	p := serveParams{Admin: addrs[0], HTTP: addrs[1], Redirect: addrs[2], TCP: addrs[3], DNS: addrs[4], AccessLog: logFile, Members: be[:3]}
	s := startServe(t, bin, p, "-watch=false")
	s.waitReloads(1)
	waitHealthy(t, s, 3)
	firstSince := memberSince(t, s, be[0])

	c := &client{p: p, errs: make(chan string, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, kind := range []string{"http", "http", "tcp", "redirect", "dns"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, kind)
		}()
	}
	time.Sleep(300 * time.Millisecond)

	steps := []struct {
		name   string
		broken string // non-empty: write this text, expect a rejection
		change func(p *serveParams)
	}{
		{name: "add a member", change: func(p *serveParams) { p.Members = be[:4] }},
		{name: "syntax error", broken: "pools: [\n  - name: web\n"},
		{name: "remove a member", change: func(p *serveParams) { p.Members = be[:3] }},
		{name: "unknown pool", broken: "pools: []\nlisteners:\n  - {name: tcp, type: tcp, addr: 127.0.0.1:1, pool: nope}\n"},
		{name: "move the TCP listener", change: func(p *serveParams) { p.TCP = addrs[5] }},
		{name: "bad duration", broken: "shutdown_timeout: soon\n"},
		{name: "policy change", change: func(p *serveParams) { p.Extra = "" }},
		{name: "unknown field", broken: "pools: []\nlisteners: []\nbogus: 1\n"},
		{name: "remove and re-add a member", change: func(p *serveParams) { p.Members = []string{be[0], be[1], be[3]} }},
		{name: "duplicate listener", broken: "pools: [{name: web}]\nlisteners:\n  - {name: a, type: tcp, addr: 127.0.0.1:1, pool: web}\n  - {name: a, type: tcp, addr: 127.0.0.1:2, pool: web}\n"},
	}
	for i, st := range steps {
		n := i + 2
		if st.broken != "" {
			s.writeRaw(st.broken)
			require.NoError(t, s.cmd.Process.Signal(syscall.SIGHUP))
			r := s.waitReloads(n)
			assert.Equal(t, false, r["ok"], st.name)
			assert.NotEmpty(t, r["error"], st.name)
			continue
		}
		np := c.params()
		st.change(&np)
		c.mu.Lock() // no request starts while a listener may move
		s.write(np)
		require.NoError(t, s.cmd.Process.Signal(syscall.SIGHUP))
		r := s.waitReloads(n)
		c.p = np
		c.mu.Unlock()
		assert.Equal(t, true, r["ok"], "%s: %v", st.name, r["error"])
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, firstSince, memberSince(t, s, be[0]), "an unchanged member keeps its health state")

	// SIGTERM under load: the daemon drains and exits 0; requests in
	// flight finish. Clients stop starting new ones at the signal.
	c.mu.Lock()
	cancel()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	c.mu.Unlock()
	wg.Wait()
	select {
	case err := <-s.done:
		assert.NoError(t, err, "exit status")
	case <-time.After(15 * time.Second):
		t.Fatal("lbkit serve did not stop")
	}
	close(c.errs)
	for e := range c.errs {
		t.Errorf("failed request: %s", e)
	}
	assert.Zero(t, c.fail.Load())
	assert.Greater(t, c.ok.Load(), int64(100))
	t.Logf("%d requests, %d failed, over 10 reloads", c.ok.Load(), c.fail.Load())

	// The access log names listener, pool and upstream.
	f, err := os.Open(logFile)
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	lines := 0
	for sc.Scan() {
		var e map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e))
		lines++
		if lines == 1 {
			assert.Equal(t, "web", e["pool"])
			assert.NotEmpty(t, e["listener"])
		}
	}
	assert.Greater(t, lines, 10)
}

// waitHealthy waits until n members of pool web are ready.
func waitHealthy(t *testing.T, s *served, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st := s.status()
		if pools, _ := st["pools"].([]any); len(pools) == 1 {
			if ready, _ := pools[0].(map[string]any)["ready"].(float64); int(ready) == n {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pool web never had %d ready members", n)
}

// memberSince returns when the member's health last changed, per /status.
func memberSince(t *testing.T, s *served, addr string) string {
	t.Helper()
	pools, _ := s.status()["pools"].([]any)
	require.Len(t, pools, 1)
	for _, m := range pools[0].(map[string]any)["members"].([]any) {
		mm := m.(map[string]any)
		if mm["addr"] == addr {
			check, _ := mm["check"].(map[string]any)
			require.NotNil(t, check, "member %s has no check status", addr)
			return fmt.Sprint(check["since"])
		}
	}
	t.Fatalf("member %s not in /status", addr)
	return ""
}

// TestServeMetrics: /metrics passes promtool, a real Prometheus server
// scrapes it, and its counters match the connections sent.
func TestServeMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	promtool, err1 := exec.LookPath("promtool")
	prom, err2 := exec.LookPath("prometheus")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus and promtool are needed (scripts/test.sh installs Debian's prometheus)")
		}
		t.Skip("prometheus or promtool not installed (Debian package prometheus)")
	}
	bin := buildLbkit(t)
	be := testBackends(t, 2)
	addrs := testnet.FreeAddrs(t, 3)
	cfg := fmt.Sprintf(`
admin: {addr: %s}
pools:
  - name: web
    members: [{addr: %s}, {addr: %s}]
    health: {type: http, path: /healthz, interval: 200ms}
listeners:
  - {name: tcp, type: tcp, addr: %s, pool: web}
`, addrs[0], be[0], be[1], addrs[1])
	dir := t.TempDir()
	file := filepath.Join(dir, "lbkit.yaml")
	require.NoError(t, os.WriteFile(file, []byte(cfg), 0o644))
	s := startServeFile(t, bin, file, addrs[0])
	waitHealthy(t, s, 2)

	const n = 50
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range n {
		resp, err := hc.Get("http://" + addrs[1] + "/")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	resp, err := http.Get("http://" + addrs[0] + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(body)
	out, err := check.CombinedOutput()
	require.NoError(t, err, "promtool check metrics:\n%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)))

	// A real Prometheus scrapes it every 200 ms.
	promAddr := testnet.FreeAddrs(t, 1)[0]
	promCfg := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(promCfg, []byte(fmt.Sprintf(`
global: {scrape_interval: 200ms, scrape_timeout: 150ms}
scrape_configs:
  - job_name: lbkit
    static_configs: [{targets: ["%s"]}]
`, addrs[0])), 0o644))
	pcmd := exec.Command(prom, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var plog testlog.Buffer
	pcmd.Stdout, pcmd.Stderr = &plog, &plog
	require.NoError(t, pcmd.Start())
	defer func() {
		pcmd.Process.Signal(syscall.SIGTERM)
		pcmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", plog.String())
		}
	}()
	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + q)
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value []any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		var v float64
		fmt.Sscan(fmt.Sprint(r.Data.Result[0].Value[1]), &v)
		return v, true
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		up, ok1 := query(`up{job="lbkit"}`)
		reqs, ok2 := query(`sum(lbkit_member_requests_total)`)
		if ok1 && ok2 && up == 1 && reqs == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: up=%v (%v), requests=%v (%v), want 1 and %d", up, ok1, reqs, ok2, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startServeFile starts lbkit serve on an existing file and waits for its
// admin endpoint; the test's cleanup stops it with SIGTERM.
func startServeFile(t *testing.T, bin, file, admin string, extraArgs ...string) *served {
	t.Helper()
	s := &served{t: t, file: file, p: serveParams{Admin: admin}, out: &testlog.Buffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(bin, append([]string{"serve", "-config", file}, extraArgs...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	require.NoError(t, s.cmd.Start())
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(15 * time.Second):
				s.cmd.Process.Kill()
				<-s.done
			}
		}
		if t.Failed() {
			t.Logf("lbkit serve output:\n%s", s.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/status")
		if err == nil {
			resp.Body.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("lbkit serve did not start: %v\n%s", err, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
