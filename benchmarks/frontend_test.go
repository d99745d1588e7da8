package benchmarks

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The front-end benchmarks run lbkit's raw HTTP front-ends side by side
// with nginx and HAProxy, every server in its own process over the same
// three backends, each backend in its own process (benchmarks/cmd):
//
//	go test ./benchmarks -run '^$' -bench 'BenchmarkFrontEnd' -benchtime=1x -timeout 30m
//
// BenchmarkFrontEndProxy loads lbkit's proxy.Server, nginx and HAProxy
// (configured as in the peers' baselines: round robin, upstream
// keep-alive) with wrk for every combination of body size (100 B, 4 KB),
// concurrency (100, 1,000, 5,000 connections) and connection handling
// (keep-alive, "Connection: close"), servers interleaved in each round,
// rounds repeated; then it opens 9,000 idle keep-alive client
// connections through each server (one request each, then silence) and
// measures the growth of the server's resident memory.
// BenchmarkFrontEndRedirect does the same for redirect.Server against
// nginx's `return 302`.
//
// Each prints a table of medians with their ranges over the rounds:
// req/s, CPU per request (the server's utime+stime from /proc, children
// included, over requests completed), wrk's p99 latency, and lbkit's
// req/s and CPU over each peer's from the same round. Only those ratios
// are comparable between runs on a shared machine.
//
// Environment: LBKIT_BENCH_ROUNDS (default 3), LBKIT_BENCH_SECONDS per
// load (default 4, after a 1 s warm-up), LBKIT_BENCH_CONNS (default
// "100,1000,5000"), LBKIT_BENCH_BODIES (default "100,4096"),
// LBKIT_BENCH_MODES (default "keepalive,close"), LBKIT_BENCH_IDLE (idle
// connections, default 9000: HAProxy cannot take 10,000 under a
// descriptor limit of 20,000; 0 skips), LBKIT_BENCH_PEERS (default
// "lbkit,nginx,haproxy"; "lbkit-goroutines" adds lbkit's servers on
// their portable goroutine-per-connection path; "gnet" and "netpoll" add,
// to BenchmarkFrontEndRedirect, the same 302 responder on those
// event-loop libraries, from the nested module benchmarks/looppeers). A
// missing wrk, nginx or HAProxy skips its part unless CI is set, when it
// fails.

const feIdleWait = 2 * time.Second

func feEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func feEnvList(name, def string) []string {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

// feNeed skips b (fails it under CI) when path does not exist.
func feNeed(b *testing.B, path, pkg string) bool {
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") != "" {
			b.Fatalf("%s missing (Debian package %s)", path, pkg)
		}
		b.Logf("%s missing (Debian package %s): skipped", path, pkg)
		return false
	}
	return true
}

// feBuild builds the benchmark's commands into a temporary directory.
func feBuild(b *testing.B) string {
	dir := b.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/", "./cmd/benchbackend", "./cmd/benchlbkit").CombinedOutput()
	if err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// feBuildLoopPeers builds the 302 responders on third-party event-loop
// libraries (gnetpeer, netpollpeer) from their own module, looppeers,
// into a temporary directory.
func feBuildLoopPeers(b *testing.B) string {
	dir := b.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/gnetpeer", "./cmd/netpollpeer")
	cmd.Dir = "looppeers"
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build in looppeers: %v\n%s", err, out)
	}
	return dir
}

// feStartLoopPeer starts one of the looppeers commands over backs.
func feStartLoopPeer(b *testing.B, bin, name string, backs []string) (string, int) {
	addr := pxFreeAddr(b)
	return addr, feStartStdin(b, addr, filepath.Join(bin, name), "-listen", addr, "-backends", strings.Join(backs, ","))
}

// feStartStdin starts a command that runs until its stdin closes.
func feStartStdin(b *testing.B, addr string, name string, args ...string) int {
	cmd := exec.Command(name, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	return pxStart(b, cmd, addr, func(*exec.Cmd) { stdin.Close() })
}

func feBackends(b *testing.B, bin string, body int) []string {
	var addrs []string
	for range 3 {
		addr := pxFreeAddr(b)
		feStartStdin(b, addr, filepath.Join(bin, "benchbackend"), "-listen", addr, "-body", strconv.Itoa(body))
		addrs = append(addrs, addr)
	}
	return addrs
}

func feStartLbkit(b *testing.B, bin string, backs []string, redirect, goroutines bool) (string, int) {
	addr := pxFreeAddr(b)
	args := []string{"-listen", addr, "-backends", strings.Join(backs, ",")}
	if redirect {
		args = append(args, "-redirect")
	}
	if goroutines {
		args = append(args, "-goroutines")
	}
	if p := os.Getenv(pxProfileEnv); p != "" {
		args = append(args, "-cpuprofile", fmt.Sprintf("%s.%d", p, time.Now().UnixNano()))
	}
	return addr, feStartStdin(b, addr, filepath.Join(bin, "benchlbkit"), args...)
}

// feStartNginx starts nginx as a proxy over backs or, with redirect, as
// a 302 responder picking one of them with split_clients.
func feStartNginx(b *testing.B, backs []string, redirect bool) (string, int) {
	dir := b.TempDir()
	addr := pxFreeAddr(b)
	var servers, split strings.Builder
	for i, a := range backs {
		fmt.Fprintf(&servers, "    server %s;\n", a)
		if i < len(backs)-1 {
			fmt.Fprintf(&split, "    %.2f%% %s;\n", 100/float64(len(backs)), a)
		} else {
			fmt.Fprintf(&split, "    * %s;\n", a)
		}
	}
	loc := `location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }`
	if redirect {
		loc = `location / { return 302 http://$backend$request_uri; }`
	}
	conf := fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  upstream be {
%[2]s    keepalive 512;
  }
  split_clients "${request_id}" $backend {
%[4]s  }
  server {
    listen %[3]s backlog=4096;
    %[5]s
  }
}
`, dir, servers.String(), addr, split.String(), loc)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(pxNginx, "-c", cfg, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	return addr, pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
}

// feStartHAProxy starts HAProxy as in the peers' baselines; maxconn is
// 9,900 (the most the hard limit of 20,000 descriptors allows) rather
// than 9,000, so that the 9,000 idle connections fit with the test's own.
func feStartHAProxy(b *testing.B, backs []string) (string, int) {
	dir := b.TempDir()
	addr := pxFreeAddr(b)
	var servers strings.Builder
	for i, a := range backs {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, a)
	}
	conf := fmt.Sprintf(`global
  maxconn 9900
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 30s
  http-reuse always
frontend fe
  bind %s
  default_backend be
backend be
  balance roundrobin
%s`, addr, servers.String())
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(pxHAProxy, "-f", cfg, "-db")
	return addr, pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
}

// feRSS returns the resident memory of pid and its direct children, in
// bytes.
func feRSS(pid int) float64 {
	pids := []int{pid}
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(raw)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	var total float64
	for _, p := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				total += kb * 1024
			}
		}
	}
	return total
}

// feWrk runs wrk for d against url, with "Connection: close" when
// closeConn.
func feWrk(url string, conns int, d time.Duration, closeConn bool) (pxResult, error) {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d/time.Second)) + "s", "--timeout", "5s", "--latency"}
	if closeConn {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.Command(pxWrk, append(args, url)...).CombinedOutput()
	if err != nil {
		return pxResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	return pxParseWrk(string(out))
}

// feIdle opens n client connections to addr, makes one request on each,
// and keeps them open and silent; it returns them for closing.
func feIdle(addr, path string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	const workers = 100
	for w := range workers {
		wg.Go(func() {
			br := bufio.NewReaderSize(nil, 8<<10)
			req := []byte("GET " + path + " HTTP/1.1\r\nHost: bench\r\n\r\n")
			for i := w; i < n; i += workers {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					if _, err = c.Write(req); err == nil {
						br.Reset(c)
						var resp *http.Response
						if resp, err = http.ReadResponse(br, nil); err == nil {
							_, err = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
					c.SetDeadline(time.Time{})
					conns[i] = c
				}
				if err != nil {
					mu.Lock()
					first = cmpOr(first, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return conns, first
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// feIdleMemory measures the growth of pid's resident memory per idle
// keep-alive connection, in bytes.
func feIdleMemory(addr, path string, pid, n int) (float64, error) {
	before := feRSS(pid)
	conns, err := feIdle(addr, path, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err != nil {
		return 0, err
	}
	time.Sleep(feIdleWait) // let the server settle: the measure is of idle connections
	return (feRSS(pid) - before) / float64(n), nil
}

type feTarget struct {
	name  string
	addr  string
	pid   int
	fresh func() (string, int) // starts another, unloaded instance
}

type feSample struct {
	ok                  bool // false: wrk failed twice
	rps, cpu, p99, errs float64
}

// feStats is one table cell's samples over the rounds.
type feStats []float64

func (s feStats) String() string {
	if len(s) == 0 {
		return "-"
	}
	v := slices.Clone(s)
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return fmt.Sprintf("%s (%s–%s)", feNum(med), feNum(v[0]), feNum(v[len(v)-1]))
}

func feNum(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v/1000, 'f', 1, 64) + "k"
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// feRun runs the interleaved rounds over targets for each case and
// prints the table.
func feRun(b *testing.B, title string, targets map[string][]feTarget, path string) {
	rounds := feEnvInt("LBKIT_BENCH_ROUNDS", 3)
	d := time.Duration(feEnvInt("LBKIT_BENCH_SECONDS", 4)) * time.Second
	var conns []int
	for _, c := range feEnvList("LBKIT_BENCH_CONNS", "100,1000,5000") {
		n, err := strconv.Atoi(c)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, n)
	}
	modes := feEnvList("LBKIT_BENCH_MODES", "keepalive,close")
	type key struct{ work, server string }
	samples := map[key][]feSample{}
	var works []string
	bodies := slices.Sorted(func(yield func(string) bool) {
		for k := range targets {
			if !yield(k) {
				return
			}
		}
	})
	for r := range rounds {
		for _, body := range bodies {
			for _, c := range conns {
				for _, mode := range modes {
					work := fmt.Sprintf("%s c=%d %s", body, c, mode)
					if r == 0 {
						works = append(works, work)
					}
					ts := targets[body]
					for i := range ts {
						t := ts[(i+r)%len(ts)] // rotate who goes first
						url := "http://" + t.addr + path
						k := key{work, t.name}
						// A run can fail when the machine's other work
						// exhausts loopback ports: pause, try once more, and
						// leave the sample out (logged) if it fails again.
						var res pxResult
						var cpu float64
						var err error
						for try := range 2 {
							if try > 0 {
								b.Logf("%s %s: %v; retrying", t.name, work, err)
								time.Sleep(3 * time.Second)
							}
							if _, err = feWrk(url, c, time.Second, mode == "close"); err != nil {
								continue
							}
							cpu0 := pxCPU(t.pid)
							if res, err = feWrk(url, c, d, mode == "close"); err == nil {
								cpu = pxCPU(t.pid) - cpu0
								break
							}
						}
						if err != nil {
							b.Logf("%s %s: %v; sample left out", t.name, work, err)
							samples[k] = append(samples[k], feSample{})
							continue
						}
						samples[k] = append(samples[k], feSample{true, res.rps, cpu / res.requests * 1e6, res.p99, res.errors})
					}
				}
			}
		}
	}
	out := &strings.Builder{}
	fmt.Fprintf(out, "\n%s: medians (min–max) over %d rounds of %v\n", title, rounds, d)
	fmt.Fprintln(out, "| work | server | req/s | CPU µs/req | p99 ms | errors | lbkit req/s ÷ this | lbkit CPU ÷ this |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|")
	names := []string{}
	for _, t := range targets[bodies[0]] {
		names = append(names, t.name)
	}
	self := names[0]
	for _, w := range works {
		for _, n := range names {
			ss := samples[key{w, n}]
			var rps, cpu, p99, errs, xr, xc feStats
			for i, s := range ss {
				if !s.ok {
					continue
				}
				rps, cpu, p99, errs = append(rps, s.rps), append(cpu, s.cpu), append(p99, s.p99), append(errs, s.errs)
				if l := samples[key{w, self}][i]; n != self && l.ok {
					xr, xc = append(xr, l.rps/s.rps), append(xc, l.cpu/s.cpu)
				}
			}
			fmt.Fprintf(out, "| %s | %s | %v | %v | %v | %v | %v | %v |\n", w, n, rps, cpu, p99, errs, xr, xc)
		}
	}
	if n := feEnvInt("LBKIT_BENCH_IDLE", 9000); n > 0 {
		fmt.Fprintf(out, "\n%s: resident memory per idle keep-alive connection (%d connections, one request each)\n", title, n)
		fmt.Fprintln(out, "| server | bytes per connection |")
		fmt.Fprintln(out, "|---|---|")
		for _, t := range targets[bodies[0]] {
			// A fresh instance: memory the loads above left would hide
			// the connections' own.
			addr, pid := t.fresh()
			per, err := feIdleMemory(addr, path, pid, n)
			if err != nil {
				b.Fatalf("%s idle: %v", t.name, err)
			}
			fmt.Fprintf(out, "| %s | %.0f |\n", t.name, per)
		}
	}
	fmt.Print(out.String())
	if f := os.Getenv("LBKIT_BENCH_OUT"); f != "" {
		os.WriteFile(f, []byte(out.String()), 0o644)
	}
	for b.Loop() {
		// The loads above are the measurement: run with -benchtime=1x.
	}
	b.ReportMetric(0, "ns/op")
}

func feStart(b *testing.B) (bin string, ok bool) {
	if !feNeed(b, pxWrk, "wrk") {
		b.SkipNow()
	}
	return feBuild(b), true
}

// BenchmarkFrontEndProxy compares proxy.Server with nginx and HAProxy;
// see the comment at the top of this file.
func BenchmarkFrontEndProxy(b *testing.B) {
	bin, _ := feStart(b)
	peers := feEnvList("LBKIT_BENCH_PEERS", "lbkit,nginx,haproxy")
	targets := map[string][]feTarget{}
	for _, body := range feEnvList("LBKIT_BENCH_BODIES", "100,4096") {
		size, err := strconv.Atoi(body)
		if err != nil {
			b.Fatal(err)
		}
		backs := feBackends(b, bin, size)
		name := fmt.Sprintf("%5dB", size)
		for _, p := range peers {
			t := feTarget{name: p}
			switch p {
			case "lbkit":
				t.fresh = func() (string, int) { return feStartLbkit(b, bin, backs, false, false) }
			case "lbkit-goroutines":
				t.fresh = func() (string, int) { return feStartLbkit(b, bin, backs, false, true) }
			case "nginx":
				if !feNeed(b, pxNginx, "nginx-light") {
					continue
				}
				t.fresh = func() (string, int) { return feStartNginx(b, backs, false) }
			case "haproxy":
				if !feNeed(b, pxHAProxy, "haproxy") {
					continue
				}
				t.fresh = func() (string, int) { return feStartHAProxy(b, backs) }
			default:
				b.Fatalf("unknown peer %q", p)
			}
			t.addr, t.pid = t.fresh()
			targets[name] = append(targets[name], t)
		}
	}
	feRun(b, "HTTP proxy", targets, "/")
}

// BenchmarkFrontEndRedirect compares redirect.Server with nginx's
// `return 302`; see the comment at the top of this file.
func BenchmarkFrontEndRedirect(b *testing.B) {
	bin, _ := feStart(b)
	ts := []feTarget{{name: "lbkit", fresh: func() (string, int) { return feStartLbkit(b, bin, redirBackends, true, false) }}}
	if slices.Contains(feEnvList("LBKIT_BENCH_PEERS", "lbkit,nginx,haproxy"), "lbkit-goroutines") {
		ts = append(ts, feTarget{name: "lbkit-goroutines", fresh: func() (string, int) { return feStartLbkit(b, bin, redirBackends, true, true) }})
	}
	loops := ""
	for _, p := range []string{"gnet", "netpoll"} {
		if slices.Contains(feEnvList("LBKIT_BENCH_PEERS", "lbkit,nginx,haproxy"), p) {
			if loops == "" {
				loops = feBuildLoopPeers(b)
			}
			ts = append(ts, feTarget{name: p, fresh: func() (string, int) { return feStartLoopPeer(b, loops, p+"peer", redirBackends) }})
		}
	}
	if feNeed(b, pxNginx, "nginx-light") {
		ts = append(ts, feTarget{name: "nginx", fresh: func() (string, int) { return feStartNginx(b, redirBackends, true) }})
	}
	for i := range ts {
		ts[i].addr, ts[i].pid = ts[i].fresh()
	}
	feRun(b, "302 responder", map[string][]feTarget{"302": ts}, redirPath)
}
