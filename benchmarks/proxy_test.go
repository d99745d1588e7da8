package benchmarks

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxy"
)

// The proxy benchmarks put each reverse proxy in front of the same three
// Go backends on loopback, in the same run, and load it at 100 and 1,000
// connections: lbkit's proxy.Server ("lbkit-server"), lbkit's proxy.HTTP
// under net/http ("lbkit") and a tuned httputil.ReverseProxy (each
// in a child process of the test binary, so their CPU is measured like the
// peers'), nginx and HAProxy (when installed). Load comes from wrk when
// installed, else from an in-process keep-alive client. Each sub-benchmark
// runs one fixed-length load whatever b.N is: run with -benchtime=1x.
//
//	go test ./benchmarks -run '^$' -bench BenchmarkProxy -benchtime=1x
//
// Metrics: req/s, p50-ms, p99-ms, errors (socket errors, timeouts and
// non-2xx answers) and cpu-us/req (the proxy's utime+stime from /proc,
// children included, over requests completed). Each peer's line also
// carries server-{rps,p99,cpu}-x and lbkit-{rps,p99,cpu}-x: proxy.Server's
// and proxy.HTTP-under-net/http's figure over that peer's, same run.

const (
	pxNginx    = "/usr/sbin/nginx"
	pxHAProxy  = "/usr/sbin/haproxy"
	pxWrk      = "/usr/bin/wrk"
	pxChildEnv = "LBKIT_BENCH_PROXY_CHILD"
	// pxProfileEnv, when set to a path prefix, makes the Go proxy children
	// write a CPU profile to <prefix>.<kind>.
	pxProfileEnv = "LBKIT_BENCH_PROXY_CPUPROFILE"
	pxWarmup     = time.Second
	pxDuration   = 3 * time.Second
)

// The test binary doubles as the Go proxies' child process.
func init() {
	if kind := os.Getenv(pxChildEnv); kind != "" {
		os.Exit(pxChildMain(kind))
	}
}

// pxChildMain runs a Go proxy named kind ("lbkit-server": proxy.Server;
// "lbkit": proxy.HTTP under net/http; "httputil") on
// os.Args' last two arguments (listen address, comma-separated backends)
// until stdin closes.
func pxChildMain(kind string) int {
	listen, backs := os.Args[len(os.Args)-2], strings.Split(os.Args[len(os.Args)-1], ",")
	var h http.Handler
	var lb *proxy.HTTP
	switch kind {
	case "lbkit", "lbkit-server":
		pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
		var bs []balancer.Backend
		for _, a := range backs {
			bs = append(bs, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
		}
		if err := pool.Set(bs); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		p, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer p.Close()
		h, lb = p, p
	case "httputil":
		var targets []*url.URL
		for _, a := range backs {
			targets = append(targets, &url.URL{Scheme: "http", Host: a})
		}
		var next atomic.Uint64
		h = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(targets[next.Add(1)%uint64(len(targets))])
				pr.SetXForwarded()
			},
			Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute},
			ErrorLog:  nil,
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown child", kind)
		return 2
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if path := os.Getenv(pxProfileEnv); path != "" {
		f, err := os.Create(path + "." + kind)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	if kind == "lbkit-server" {
		// proxy.Server: the purpose-built HTTP/1.1 front-end.
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := proxy.NewServer(proxy.ServerConfig{Handler: lb, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			panic(err)
		}
		go func() {
			io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
			cancel()
		}()
		srv.Serve(ctx, ln)
		return 0
	}
	// proxy.HTTP under net/http, as a user serving TLS or HTTP/2 runs it.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, Protocols: &protos}
	go srv.Serve(ln)
	io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
	srv.Close()
	return 0
}

// pxBackends starts three Go backends answering a short text body.
func pxBackends(b *testing.B) []string {
	body := []byte("hello from a backend\n")
	var addrs []string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Write(body)
		})}
		go srv.Serve(ln)
		b.Cleanup(func() { srv.Close() })
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// pxFreeAddr returns a loopback address with a port that was free.
func pxFreeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// pxWaitListen waits until addr accepts connections.
func pxWaitListen(b *testing.B, addr string, cmd *exec.Cmd) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("%s did not listen on %s", cmd.Path, addr)
}

// pxStart starts cmd, waits for addr and stops it by PID at cleanup.
func pxStart(b *testing.B, cmd *exec.Cmd, addr string, stop func(*exec.Cmd)) int {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		stop(cmd)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if s := stderr.String(); s != "" && b.Failed() {
			b.Log(s)
		}
	})
	pxWaitListen(b, addr, cmd)
	return cmd.Process.Pid
}

func pxStartChild(b *testing.B, kind string, backs []string) (string, int) {
	addr := pxFreeAddr(b)
	cmd := exec.Command(os.Args[0], "-test.run=^$", addr, strings.Join(backs, ","))
	cmd.Env = append(os.Environ(), pxChildEnv+"="+kind)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	pid := pxStart(b, cmd, addr, func(*exec.Cmd) { stdin.Close() })
	return addr, pid
}

func pxStartNginx(b *testing.B, backs []string) (string, int) {
	if _, err := os.Stat(pxNginx); err != nil {
		b.Skip("nginx not installed (Debian package nginx-light)")
	}
	dir := b.TempDir()
	addr := pxFreeAddr(b)
	var servers strings.Builder
	for _, a := range backs {
		fmt.Fprintf(&servers, "    server %s;\n", a)
	}
	conf := fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  upstream be {
%[2]s    keepalive 512;
  }
  server {
    listen %[3]s;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, dir, servers.String(), addr)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(pxNginx, "-c", cfg, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	pid := pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
	return addr, pid
}

func pxStartHAProxy(b *testing.B, backs []string) (string, int) {
	if _, err := os.Stat(pxHAProxy); err != nil {
		b.Skip("haproxy not installed (Debian package haproxy)")
	}
	dir := b.TempDir()
	addr := pxFreeAddr(b)
	var servers strings.Builder
	for i, a := range backs {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, a)
	}
	conf := fmt.Sprintf(`global
  maxconn 9000
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
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
	pid := pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
	return addr, pid
}

// pxCPU returns the utime+stime of pid and its direct children, in
// seconds.
func pxCPU(pid int) float64 {
	pids := []int{pid}
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(raw)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	var ticks float64
	for _, p := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(raw)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		// fields[0] is state (stat field 3): utime and stime are fields 14 and 15.
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		ticks += ut + st
	}
	return ticks / 100 // USER_HZ
}

type pxResult struct {
	rps, p50, p99 float64 // req/s, ms, ms
	requests      float64
	errors        float64
}

var (
	pxReqs   = regexp.MustCompile(`(\d+) requests in`)
	pxRPS    = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	pxSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	pxNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	pxLat    = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
)

// pxWrkRun runs wrk and parses its output.
func pxWrkRun(addr string, conns int, d time.Duration) (pxResult, error) {
	out, err := exec.Command(pxWrk, "-t2", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d/time.Second))+"s",
		"--timeout", "5s", "--latency", "http://"+addr+"/").CombinedOutput()
	if err != nil {
		return pxResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	return pxParseWrk(string(out))
}

// pxParseWrk parses wrk's output.
func pxParseWrk(s string) (pxResult, error) {
	var r pxResult
	if m := pxReqs.FindStringSubmatch(s); m != nil {
		r.requests, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := pxRPS.FindStringSubmatch(s); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := pxSock.FindStringSubmatch(s); m != nil {
		for _, v := range m[1:] {
			n, _ := strconv.ParseFloat(v, 64)
			r.errors += n
		}
	}
	if m := pxNon2xx.FindStringSubmatch(s); m != nil {
		n, _ := strconv.ParseFloat(m[1], 64)
		r.errors += n
	}
	for _, m := range pxLat.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	if r.rps == 0 {
		return r, fmt.Errorf("wrk: no result in %q", s)
	}
	return r, nil
}

// pxGoLoad is the fallback load generator: conns goroutines, each with
// its own keep-alive connection, for d.
func pxGoLoad(addr string, conns int, d time.Duration) (pxResult, error) {
	var mu sync.Mutex
	var lats []time.Duration
	var errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	for range conns {
		wg.Go(func() {
			var local []time.Duration
			defer func() { mu.Lock(); lats = append(lats, local...); mu.Unlock() }()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs.Add(1)
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for ctx.Err() == nil {
				t0 := time.Now()
				c.SetDeadline(t0.Add(5 * time.Second))
				if _, err := c.Write(req); err != nil {
					errs.Add(1)
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
				}
				local = append(local, time.Since(t0))
			}
		})
	}
	wg.Wait()
	if len(lats) == 0 {
		return pxResult{}, fmt.Errorf("no request completed")
	}
	slices.Sort(lats)
	ms := func(q float64) float64 { return float64(lats[int(q*float64(len(lats)-1))]) / 1e6 }
	return pxResult{rps: float64(len(lats)) / d.Seconds(), p50: ms(0.5), p99: ms(0.99), requests: float64(len(lats)), errors: float64(errs.Load())}, nil
}

// BenchmarkProxy compares reverse proxies over the same three backends in
// one run; see the comment at the top of this file.
func BenchmarkProxy(b *testing.B) {
	backs := pxBackends(b)
	_, haveWrk := os.Stat(pxWrk)
	load := pxGoLoad
	if haveWrk == nil {
		load = pxWrkRun
	}
	targets := []struct {
		name  string
		start func(*testing.B, []string) (string, int)
	}{
		{"lbkit-server", func(b *testing.B, bs []string) (string, int) { return pxStartChild(b, "lbkit-server", bs) }},
		{"lbkit", func(b *testing.B, bs []string) (string, int) { return pxStartChild(b, "lbkit", bs) }},
		{"nginx", pxStartNginx},
		{"haproxy", pxStartHAProxy},
		{"httputil", func(b *testing.B, bs []string) (string, int) { return pxStartChild(b, "httputil", bs) }},
	}
	type pxRun struct {
		res pxResult
		cpu float64 // µs per request
	}
	for _, conns := range []int{100, 1000} {
		runs := map[string]pxRun{}
		for _, tg := range targets {
			b.Run(fmt.Sprintf("c=%d/%s", conns, tg.name), func(b *testing.B) {
				addr, pid := tg.start(b, backs)
				if _, err := load(addr, conns, pxWarmup); err != nil {
					b.Fatal(err)
				}
				cpu0 := pxCPU(pid)
				res, err := load(addr, conns, pxDuration)
				if err != nil {
					b.Fatal(err)
				}
				cpu := pxCPU(pid) - cpu0
				for b.Loop() {
					// One fixed-length load per sub-benchmark: see above.
				}
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(res.rps, "req/s")
				b.ReportMetric(res.p50, "p50-ms")
				b.ReportMetric(res.p99, "p99-ms")
				b.ReportMetric(res.errors, "errors")
				if res.requests > 0 {
					b.ReportMetric(cpu/res.requests*1e6, "cpu-us/req")
					runs[tg.name] = pxRun{res, cpu / res.requests * 1e6}
				}
				// Ratios from the same run are what to compare (absolute
				// numbers drift by tens of percent between runs on a
				// shared machine): lbkit's figure over this peer's.
				for _, ours := range []struct{ name, metric string }{{"lbkit-server", "server"}, {"lbkit", "lbkit"}} {
					if lb, ok := runs[ours.name]; ok && tg.name != ours.name && res.rps > 0 && res.p99 > 0 && res.requests > 0 {
						b.ReportMetric(lb.res.rps/res.rps, ours.metric+"-rps-x")
						b.ReportMetric(lb.res.p99/res.p99, ours.metric+"-p99-x")
						b.ReportMetric(lb.cpu/(cpu/res.requests*1e6), ours.metric+"-cpu-x")
					}
				}
			})
		}
	}
}
