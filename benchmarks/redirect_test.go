package benchmarks

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/redirect"
)

// The redirect benchmarks compare lbkit's redirect handler, served by a
// plain net/http server, with nginx's `return 302` on the same machine in
// the same run. Both pick among three backends on 127.0.0.1 (never
// contacted: a redirect only names them).

const (
	redirNginx   = "/usr/sbin/nginx"
	redirWrk     = "/usr/bin/wrk"
	redirConns   = 100
	redirPath    = "/static/app.js?v=42"
	redirTimeout = 30 * time.Second
)

var redirBackends = []string{"127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"}

// redirPool is a round-robin pool of redirBackends (each redirected to
// as http://<addr>), closed at cleanup.
func redirPool(b *testing.B) *balancer.Pool {
	pool := balancer.MustNew(balancer.Config{Name: "bench", Builder: roundrobin.Builder{}})
	b.Cleanup(func() { pool.Close() })
	for _, a := range redirBackends {
		if err := pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(a)}); err != nil {
			b.Fatal(err)
		}
	}
	return pool
}

// redirStartLbkit serves a redirect handler on a free loopback port and
// returns its address.
func redirStartLbkit(b *testing.B) string {
	b.Helper()
	h, err := redirect.New(redirect.Config{Pool: redirPool(b), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return redirServe(b, h)
}

// redirStartServer serves the same handler with redirect.Server, the
// purpose-built HTTP/1.1 responder.
func redirStartServer(b *testing.B) string {
	b.Helper()
	h, err := redirect.New(redirect.Config{Pool: redirPool(b), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s, err := redirect.NewServer(redirect.ServerConfig{Handler: h})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String()
}

// redirStartPlain serves the baseline every Go redirector starts from:
// http.Redirect to a rotating backend, in the same kind of server.
func redirStartPlain(b *testing.B) string {
	var next atomic.Uint32
	return redirServe(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := next.Add(1) % uint32(len(redirBackends))
		http.Redirect(w, r, "http://"+redirBackends[i]+r.URL.RequestURI(), http.StatusFound)
	}))
}

func redirServe(b *testing.B, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go srv.Serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// redirStartNginx starts nginx answering `return 302` with a
// split_clients pick, and returns its address. It skips b when nginx is
// not installed. nginx is stopped by its PID when b ends.
func redirStartNginx(b *testing.B) string {
	addr, _ := redirStartNginxPID(b)
	return addr
}

// redirStartNginxPID is redirStartNginx that also returns the master's
// PID.
func redirStartNginxPID(b *testing.B) (string, int) {
	b.Helper()
	if _, err := os.Stat(redirNginx); err != nil {
		b.Skipf("nginx not installed at %s", redirNginx)
	}
	dir := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  split_clients "${request_id}" $backend {
    33.3%% %[3]s;
    33.3%% %[4]s;
    *      %[5]s;
  }
  server {
    listen %[2]s;
    location / { return 302 http://$backend$request_uri; }
  }
}
`, dir, addr, redirBackends[0], redirBackends[1], redirBackends[2])
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(redirNginx, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", confPath)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGQUIT) // graceful stop of master and workers
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	})
	for deadline := time.Now().Add(redirTimeout); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr, pid
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			b.Fatalf("nginx did not start: %v\n%s\n%s", err, stderr.String(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redirLoad sends n GET requests to addr over conns keep-alive
// connections, one request in flight per connection, parsing responses
// just enough to find their end. Every response must be a 302 whose
// Location names a backend. It returns the elapsed time.
func redirLoad(addr string, n, conns int) (time.Duration, error) {
	req := []byte("GET " + redirPath + " HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: lbkit-bench\r\n\r\n")
	var left atomic.Int64
	left.Store(int64(n))
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.DialTimeout("tcp", addr, redirTimeout)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(redirTimeout))
		cs[i] = c
	}
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() {
			br := bufio.NewReaderSize(c, 4096)
			for left.Add(-1) >= 0 {
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				if err := redirReadResponse(br); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return elapsed, nil
}

var (
	redirStatus302 = []byte("HTTP/1.1 302 ")
	redirLocation  = []byte("location: http://127.0.0.1:1808")
)

// redirReadResponse reads one response: the status line, headers up to the
// empty line, and a Content-Length body.
func redirReadResponse(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, redirStatus302) {
		return fmt.Errorf("unexpected status line %q", line)
	}
	length, located := 0, false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if len(line) > 16 && (line[0] == 'C' || line[0] == 'c') && bytes.EqualFold(line[:15], []byte("content-length:")) {
			length, err = strconv.Atoi(string(bytes.TrimSpace(line[15:])))
			if err != nil {
				return err
			}
		}
		if len(line) > len(redirLocation) && bytes.EqualFold(line[:len(redirLocation)], redirLocation) {
			located = true
		}
	}
	if !located {
		return errors.New("response without a backend Location")
	}
	_, err = br.Discard(length)
	return err
}

// BenchmarkRedirectVsNginx sends b.N requests to each responder at 100
// concurrent keep-alive connections from an in-process client, alternating
// halves so drift on a shared machine hits all alike, and reports each
// one's requests per second and the ratios to nginx (target ≥ 0.9) of the
// lbkit handler in net/http ("handler") and in redirect.Server
// ("server"), and of the handler to a plain net/http redirector.
func BenchmarkRedirectVsNginx(b *testing.B) {
	nginx := redirStartNginx(b)
	lbkit := redirStartLbkit(b)
	server := redirStartServer(b)
	plain := redirStartPlain(b)
	// Warm them up (connections, caches, GC pacing).
	for _, a := range []string{nginx, lbkit, server, plain} {
		if _, err := redirLoad(a, 2000, redirConns); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	var tl, ts, tn, tp time.Duration
	for _, half := range []int{b.N / 2, b.N - b.N/2} {
		if half == 0 {
			continue
		}
		for _, run := range []struct {
			name, addr string
			total      *time.Duration
		}{{"lbkit", lbkit, &tl}, {"server", server, &ts}, {"nginx", nginx, &tn}, {"plain", plain, &tp}} {
			d, err := redirLoad(run.addr, half, redirConns)
			if err != nil {
				b.Fatal(run.name, ": ", err)
			}
			*run.total += d
		}
	}
	b.StopTimer()
	lr := float64(b.N) / tl.Seconds()
	sr := float64(b.N) / ts.Seconds()
	nr := float64(b.N) / tn.Seconds()
	pr := float64(b.N) / tp.Seconds()
	b.ReportMetric(lr, "handler-req/s")
	b.ReportMetric(sr, "server-req/s")
	b.ReportMetric(nr, "nginx-req/s")
	b.ReportMetric(pr, "plain-go-req/s")
	b.ReportMetric(lr/nr, "handler/nginx")
	b.ReportMetric(sr/nr, "server/nginx")
	b.ReportMetric(lr/pr, "handler/plain-go")
}

// redirWrkResults caches one wrk comparison per process: wrk runs for a
// fixed time, so repeating it for every b.N the framework tries would only
// multiply the run time.
var redirWrkResults struct {
	sync.Once
	lbkit, server, nginx          float64 // req/s
	lbkitCPU, serverCPU, nginxCPU float64 // µs of CPU per request
	err                           error
}

var redirWrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

var redirWrkCount = regexp.MustCompile(`(\d+) requests in`)

// redirRunWrk runs wrk against addr and returns the request rate and the
// number of requests completed.
func redirRunWrk(addr string) (rate float64, requests int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), redirTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, redirWrk, "-t2", "-c100", "-d2s", "--timeout", "5s", "http://"+addr+redirPath).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	m, n := redirWrkRate.FindSubmatch(out), redirWrkCount.FindSubmatch(out)
	if m == nil || n == nil {
		return 0, 0, fmt.Errorf("wrk: no rate in output\n%s", out)
	}
	// wrk counts 302 as "Non-2xx": expected. It prints "Socket errors"
	// only when some occurred.
	if bytes.Contains(out, []byte("Socket errors")) {
		return 0, 0, fmt.Errorf("wrk reported socket errors\n%s", out)
	}
	rate, err = strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return 0, 0, err
	}
	requests, err = strconv.ParseInt(string(n[1]), 10, 64)
	return rate, requests, err
}

// redirCPU returns the CPU time (user + system) used so far by process
// pid and its live children, from /proc. Clock ticks are 10 ms: fine over
// a run of some seconds.
func redirCPU(pid int) (time.Duration, error) {
	pids := []string{strconv.Itoa(pid)}
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	pids = append(pids, strings.Fields(string(children))...)
	var ticks int64
	for _, p := range pids {
		stat, err := os.ReadFile("/proc/" + p + "/stat")
		if err != nil {
			return 0, err
		}
		// Fields after the command name's closing parenthesis: utime is
		// the 12th, stime the 13th.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// BenchmarkRedirectVsNginxWrk measures the responders with wrk (-t2 -c100
// -d2s each, two alternating rounds, after a warm-up), the load generator
// the peer baselines were measured with, in its own process. It runs once per process and skips when wrk or nginx
// is missing. ns/op is meaningless here; read the reported metrics.
func BenchmarkRedirectVsNginxWrk(b *testing.B) {
	if _, err := os.Stat(redirWrk); err != nil {
		b.Skipf("wrk not installed at %s", redirWrk)
	}
	r := &redirWrkResults
	r.Do(func() {
		nginx, nginxPID := redirStartNginxPID(b)
		lbkit := redirStartLbkit(b)
		server := redirStartServer(b)
		for _, a := range []string{nginx, lbkit, server} {
			if _, err := redirLoad(a, 5000, redirConns); err != nil {
				r.err = err
				return
			}
		}
		self := os.Getpid()
		// Two rounds, alternating, so load drift on a shared machine
		// hits every responder alike. Rates are means; CPU per request
		// is the responder's process CPU time (nginx: master and
		// workers; lbkit: this process, which does nothing else while
		// wrk runs) over requests completed.
		const rounds = 2
		var cpu [3]time.Duration
		var reqs [3]int64
		for range rounds {
			for i, run := range []struct {
				addr string
				pid  int
				rate *float64
			}{{lbkit, self, &r.lbkit}, {server, self, &r.server}, {nginx, nginxPID, &r.nginx}} {
				before, err := redirCPU(run.pid)
				if err != nil {
					r.err = err
					return
				}
				rate, n, err := redirRunWrk(run.addr)
				if err != nil {
					r.err = err
					return
				}
				after, err := redirCPU(run.pid)
				if err != nil {
					r.err = err
					return
				}
				*run.rate += rate / rounds
				cpu[i] += after - before
				reqs[i] += n
			}
		}
		per := func(i int) float64 { return float64(cpu[i].Microseconds()) / float64(max(reqs[i], 1)) }
		r.lbkitCPU, r.serverCPU, r.nginxCPU = per(0), per(1), per(2)
	})
	if r.err != nil {
		b.Fatal(r.err)
	}
	for b.Loop() {
	}
	b.ReportMetric(r.lbkit, "handler-req/s")
	b.ReportMetric(r.server, "server-req/s")
	b.ReportMetric(r.nginx, "nginx-req/s")
	b.ReportMetric(r.lbkit/r.nginx, "handler/nginx")
	b.ReportMetric(r.server/r.nginx, "server/nginx")
	b.ReportMetric(r.lbkitCPU, "handler-cpu-µs/req")
	b.ReportMetric(r.serverCPU, "server-cpu-µs/req")
	b.ReportMetric(r.nginxCPU, "nginx-cpu-µs/req")
}

// BenchmarkRedirectHandler is the handler's own cost, without a server:
// what lbkit adds on top of net/http per request.
func BenchmarkRedirectHandler(b *testing.B) {
	h, err := redirect.New(redirect.Config{Pool: redirPool(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r, _ := http.NewRequest(http.MethodGet, "http://bench.example"+redirPath, nil)
		r.RemoteAddr = "192.0.2.1:1234"
		w := &redirWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			h.ServeHTTP(w, r)
		}
	})
}

type redirWriter struct{ h http.Header }

func (w *redirWriter) Header() http.Header         { return w.h }
func (w *redirWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *redirWriter) WriteHeader(int)             {}

var _ io.Writer = (*redirWriter)(nil)
