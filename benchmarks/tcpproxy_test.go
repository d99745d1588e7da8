package benchmarks

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/tcpproxy"
)

// The TCP proxy benchmarks put lbkit's tcpproxy.Server (a child process of
// the test binary) and HAProxy (mode tcp, nbthread = CPUs, splice-auto)
// in front of the same three backends (each its own child process), on
// loopback, and run them in interleaved rounds:
//
//	go test ./benchmarks -run '^$' -bench BenchmarkTCPProxy -benchtime=1x
//
// BenchmarkTCPProxy measures, per round and proxy, new connections per
// second (wrk with "Connection: close" against the backends' minimal HTTP
// answer of 100 bytes: one TCP connection per request) and bulk
// throughput (two streams of 512 MiB from the backends), with the proxy's
// CPU (utime+stime from /proc) per connection and per GB. It reports the
// median of each figure with its range (-min, -max) and lbkit's median
// over HAProxy's of the same run (x-haproxy). With
// LBKIT_BENCH_TCP_STRACE=1 it also counts each proxy's system calls per
// connection with strace -f -c over 2,000 connections from 4 clients.
//
// BenchmarkTCPProxyIdle opens LBKIT_BENCH_TCP_IDLE (default 10,000) idle
// proxied connections through a fresh proxy process each round and
// reports the proxy's RSS growth per connection, in KB.
//
// Both skip, saying why, when wrk or HAProxy is missing and CI is unset.
// LBKIT_BENCH_TCP_ROUNDS sets the number of rounds (default 3).

const (
	tpHAProxy    = "/usr/sbin/haproxy"
	tpWrk        = "/usr/bin/wrk"
	tpStrace     = "/usr/bin/strace"
	tpChildEnv   = "LBKIT_BENCH_TCP_CHILD"
	tpRoundsEnv  = "LBKIT_BENCH_TCP_ROUNDS"
	tpIdleEnv    = "LBKIT_BENCH_TCP_IDLE"
	tpStraceEnv  = "LBKIT_BENCH_TCP_STRACE"
	tpWarmup     = time.Second
	tpDuration   = 5 * time.Second
	tpWrkConns   = 64
	tpBulkBytes  = 512 << 20
	tpBulkConns  = 2
	tpStraceN    = 2000
	tpBodyLen    = 100
	tpFileLimit  = 100_000 // asked for; a container may cap it lower
	tpIdleSettle = time.Second
)

// The test binary doubles as the benchmark's child processes.
func init() {
	if kind := os.Getenv(tpChildEnv); kind != "" {
		os.Exit(tpChildMain(kind))
	}
}

// tpChildMain runs a child named kind on os.Args' last arguments until
// stdin closes: "backend" (listen address) or "lbkit" (listen address,
// comma-separated backends).
func tpChildMain(kind string) int {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	args := os.Args[len(os.Args)-2:]
	var err error
	switch kind {
	case "backend":
		err = tpBackend(ctx, args[0])
	case "lbkit":
		pool := balancer.MustNew(balancer.Config{Name: "bench", Builder: roundrobin.Builder{}})
		var bs []balancer.Backend
		for _, a := range strings.Split(args[1], ",") {
			bs = append(bs, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
		}
		if err = pool.Set(bs); err != nil {
			break
		}
		var s *tcpproxy.Server
		s, err = tcpproxy.New(tcpproxy.Config{Pool: pool, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			break
		}
		err = s.ListenAndServe(ctx, args[0])
	default:
		err = fmt.Errorf("unknown child %q", kind)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// tpBackend serves addr until ctx ends. Each connection starts with a
// command: an HTTP request ("GET ...", answered with a 100-byte body and
// closed), "S <n>\n" (n bytes are sent, then the connection closed) or
// "I\n" ("ok\n" is sent, then the connection stays idle until the client
// closes it).
func tpBackend(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	resp := []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		tpBodyLen, bytes.Repeat([]byte("x"), tpBodyLen)))
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 4096)
			n := 0
			for {
				m, err := c.Read(buf[n:])
				n += m
				if err != nil || n == len(buf) {
					return
				}
				if n > 0 && buf[0] != 'G' && bytes.IndexByte(buf[:n], '\n') >= 0 {
					break
				}
				if bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
					break
				}
			}
			switch buf[0] {
			case 'G':
				c.Write(resp)
			case 'S':
				size, _ := strconv.Atoi(strings.TrimSpace(string(buf[2:n])))
				for size > 0 {
					m, err := c.Write(chunk[:min(size, len(chunk))])
					if err != nil {
						return
					}
					size -= m
				}
			case 'I':
				c.Write([]byte("ok\n"))
				io.Copy(io.Discard, c)
			}
		}()
	}
}

// tpProc is a proxy (or backend) process under test.
type tpProc struct {
	name string
	addr string
	pid  int
	stop func() // stops the process by its PID and waits for it
}

// tpFreeAddr returns a loopback address with a port that was free.
func tpFreeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// tpStart starts cmd, waits until addr accepts connections and returns
// the process; stop (by PID) also runs at cleanup.
func tpStart(b *testing.B, name string, cmd *exec.Cmd, addr string, signal func()) *tpProc {
	var stderr strings.Builder
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var once sync.Once
	p := &tpProc{name: name, addr: addr, pid: cmd.Process.Pid}
	p.stop = func() {
		once.Do(func() {
			signal()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				syscall.Kill(p.pid, syscall.SIGKILL)
				<-done
			}
		})
	}
	b.Cleanup(p.stop)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return p
		}
		select {
		case <-done:
			b.Fatalf("%s exited: %s", name, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not listen on %s: %s", name, addr, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tpStartChild starts the test binary as child kind, stopped by closing
// its stdin.
func tpStartChild(b *testing.B, kind string, backs []string) *tpProc {
	addr := tpFreeAddr(b)
	cmd := exec.Command(os.Args[0], "-test.run=^$", addr, strings.Join(backs, ","))
	cmd.Env = append(os.Environ(), tpChildEnv+"="+kind)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	return tpStart(b, kind, cmd, addr, func() { stdin.Close() })
}

// tpStartHAProxy starts HAProxy in TCP mode with one thread per CPU.
func tpStartHAProxy(b *testing.B, backs []string) *tpProc {
	dir := b.TempDir()
	addr := tpFreeAddr(b)
	var servers strings.Builder
	for i, a := range backs {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, a)
	}
	conf := fmt.Sprintf(`global
  maxconn %[1]d
  maxpipes %[5]d
  nbthread %[2]d
defaults
  maxconn %[1]d
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option splice-auto
frontend fe
  bind %[3]s
  default_backend be
backend be
  balance roundrobin
%[4]s`, min(tpMaxConns(), 30000), runtime.NumCPU(), addr, servers.String(), tpPipes)
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(tpHAProxy, "-f", cfg, "-db")
	return tpStart(b, "haproxy", cmd, addr, func() { cmd.Process.Signal(syscall.SIGTERM) })
}

// tpSetup raises the file limit (children inherit it), checks the peers
// and starts three backends.
func tpSetup(b *testing.B) []string {
	for _, p := range []string{tpHAProxy, tpWrk} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "" {
				b.Skipf("%s not installed (Debian packages haproxy, wrk): no side-by-side figures", p)
			}
			b.Fatalf("%s not installed", p)
		}
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if lim.Max < tpFileLimit {
		want := syscall.Rlimit{Cur: tpFileLimit, Max: tpFileLimit}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			lim = want
		}
	}
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // children inherit it
	tpFiles = int(lim.Max)
	var backs []string
	for range 3 {
		backs = append(backs, tpStartChild(b, "backend", []string{"-"}).addr)
	}
	return backs
}

// tpFiles is the file limit of the benchmark and its children: a proxy
// holds two descriptors per connection, so with a hard limit of 20,000
// the idle run opens fewer than 10,000 connections.
var tpFiles int

// tpMaxConns is the largest number of proxied connections the file
// limit allows, with room for the process's own descriptors.
// (HAProxy's are its listeners and up to tpPipes pipes of two).
func tpMaxConns() int { return (tpFiles - 4*tpPipes) / 2 }

// tpPipes bounds HAProxy's splice pipes (by default a quarter of maxconn,
// which would not fit the file limit).
const tpPipes = 1000

// tpCPU returns the utime+stime of pid, in seconds.
func tpCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// tpRSS returns the resident set of pid, in KB.
func tpRSS(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return v
		}
	}
	return 0
}

var tpWrkReqs = regexp.MustCompile(`(\d+) requests in ([\d.]+)s`)

// tpConnRate runs wrk with one connection per request against p for d
// and returns connections per second and the proxy's CPU per connection
// in µs.
func tpConnRate(b *testing.B, p *tpProc, d time.Duration) (rate, cpuUS float64) {
	run := func(d time.Duration) (n, secs float64) {
		out, err := exec.Command(tpWrk, "-t2", fmt.Sprintf("-c%d", tpWrkConns), fmt.Sprintf("-d%ds", int(d.Seconds())),
			"--timeout", "5s", "-H", "Connection: close", "http://"+p.addr+"/").CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
			b.Logf("%s: wrk saw errors:\n%s", p.name, out)
		}
		m := tpWrkReqs.FindStringSubmatch(string(out))
		if m == nil {
			b.Fatalf("wrk output not understood:\n%s", out)
		}
		n, _ = strconv.ParseFloat(m[1], 64)
		secs, _ = strconv.ParseFloat(m[2], 64)
		return n, secs
	}
	run(tpWarmup)
	cpu0 := tpCPU(p.pid)
	n, secs := run(d)
	return n / secs, (tpCPU(p.pid) - cpu0) / n * 1e6
}

// tpBulk reads tpBulkConns streams of tpBulkBytes from the backends
// through p and returns MB/s and the proxy's CPU per GB in seconds.
func tpBulk(b *testing.B, p *tpProc) (mbps, cpuPerGB float64) {
	cpu0 := tpCPU(p.pid)
	start := time.Now()
	var wg sync.WaitGroup
	var total atomic.Int64
	errs := make(chan error, tpBulkConns)
	for range tpBulkConns {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			fmt.Fprintf(c, "S %d\n", tpBulkBytes)
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err == io.EOF {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("%s bulk: %v", p.name, err)
	}
	if got := total.Load(); got != tpBulkConns*tpBulkBytes {
		b.Fatalf("%s bulk: got %d bytes, want %d", p.name, got, tpBulkConns*tpBulkBytes)
	}
	secs := time.Since(start).Seconds()
	bytes := float64(total.Load())
	return bytes / 1e6 / secs, (tpCPU(p.pid) - cpu0) / (bytes / 1e9)
}

// tpShortConns runs n connections (one HTTP request each) from 4
// clients through addr.
func tpShortConns(addr string, n int) error {
	var next atomic.Int64
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			buf := make([]byte, 512)
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: b\r\n\r\n")
				got := 0
				for err == nil {
					var m int
					m, err = c.Read(buf)
					got += m
				}
				c.Close()
				if err != io.EOF || got < tpBodyLen {
					errs <- fmt.Errorf("read %d bytes: %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

var tpStraceTotal = regexp.MustCompile(`(?m)^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(\d+)?\s*total$`)

// tpSyscalls counts p's system calls per connection over tpStraceN
// connections and logs strace's table.
func tpSyscalls(b *testing.B, p *tpProc) float64 {
	out := filepath.Join(b.TempDir(), "strace.out")
	cmd := exec.Command(tpStrace, "-f", "-c", "-q", "-o", out, "-p", strconv.Itoa(p.pid))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	straced := func() bool { // every thread has a tracer
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
		for _, t := range tasks {
			raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p.pid, t.Name()))
			if bytes.Contains(raw, []byte("TracerPid:\t0\n")) {
				return false
			}
		}
		return len(tasks) > 0
	}
	for deadline := time.Now().Add(10 * time.Second); !straced(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			b.Fatal("strace did not attach")
		}
	}
	err := tpShortConns(p.addr, tpStraceN)
	time.Sleep(200 * time.Millisecond) // let the last closes land
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	if err != nil {
		b.Fatalf("%s under strace: %v", p.name, err)
	}
	raw, _ := os.ReadFile(out)
	m := tpStraceTotal.FindSubmatch(raw)
	if m == nil {
		b.Fatalf("strace output not understood:\n%s", raw)
	}
	b.Logf("%s, %d connections under strace -f -c:\n%s", p.name, tpStraceN, raw)
	calls, _ := strconv.ParseFloat(string(m[1]), 64)
	return calls / tpStraceN
}

// tpIdle opens n idle proxied connections through p and returns the
// proxy's RSS growth per connection in KB.
func tpIdle(b *testing.B, p *tpProc, n int) float64 {
	idle := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "I\n"); err != nil {
			return err
		}
		line, err := bufio.NewReaderSize(c, 16).ReadString('\n')
		if err == nil && line != "ok\n" {
			err = fmt.Errorf("backend said %q", line)
		}
		return err
	}
	warm, err := net.Dial("tcp", p.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	if err := idle(warm); err != nil {
		b.Fatal(err)
	}
	time.Sleep(tpIdleSettle)
	before := tpRSS(p.pid)
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				c, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
				if err == nil {
					conns[i] = c
					err = idle(c)
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("%s idle: %v", p.name, err)
	}
	time.Sleep(tpIdleSettle)
	return (tpRSS(p.pid) - before) / float64(n)
}

// tpRounds is the number of interleaved rounds.
func tpRounds() int {
	if n, err := strconv.Atoi(os.Getenv(tpRoundsEnv)); err == nil && n > 0 {
		return n
	}
	return 3
}

// tpStat is a median with its range.
type tpStat struct{ med, lo, hi float64 }

func tpMedian(xs []float64) tpStat {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return tpStat{}
	}
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return tpStat{m, s[0], s[len(s)-1]}
}

func (s tpStat) String() string { return fmt.Sprintf("%.4g (%.4g–%.4g)", s.med, s.lo, s.hi) }

// report reports name's median and range under unit.
func (s tpStat) report(b *testing.B, name, unit string) {
	b.ReportMetric(s.med, name+"-"+unit)
	b.ReportMetric(s.lo, name+"-"+unit+"-min")
	b.ReportMetric(s.hi, name+"-"+unit+"-max")
}

// BenchmarkTCPProxy runs the TCP proxies side by side; see the comment at
// the top of the file. Run with -benchtime=1x: each run is one fixed set
// of rounds whatever b.N is.
func BenchmarkTCPProxy(b *testing.B) {
	backs := tpSetup(b)
	procs := []*tpProc{tpStartChild(b, "lbkit", backs), tpStartHAProxy(b, backs)}
	type figures struct{ rate, cpuConn, mbps, cpuGB []float64 }
	got := map[string]*figures{}
	for _, p := range procs {
		got[p.name] = &figures{}
	}
	for b.Loop() {
		for r := range tpRounds() {
			order := procs
			if r%2 == 1 {
				order = []*tpProc{procs[1], procs[0]}
			}
			for _, p := range order {
				f := got[p.name]
				rate, cpu := tpConnRate(b, p, tpDuration)
				mbps, gb := tpBulk(b, p)
				f.rate, f.cpuConn = append(f.rate, rate), append(f.cpuConn, cpu)
				f.mbps, f.cpuGB = append(f.mbps, mbps), append(f.cpuGB, gb)
				b.Logf("round %d %-8s %8.0f conn/s %6.1f µs CPU/conn %7.0f MB/s %5.3f s CPU/GB", r, p.name, rate, cpu, mbps, gb)
			}
		}
	}
	lb, ha := got["lbkit"], got["haproxy"]
	for _, p := range procs {
		f := got[p.name]
		rate, cpu, mbps, gb := tpMedian(f.rate), tpMedian(f.cpuConn), tpMedian(f.mbps), tpMedian(f.cpuGB)
		rate.report(b, p.name, "conn/s")
		cpu.report(b, p.name, "cpu-us/conn")
		mbps.report(b, p.name, "MB/s")
		gb.report(b, p.name, "cpu-s/GB")
		b.Logf("%-8s conn/s %s · µs CPU/conn %s · MB/s %s · s CPU/GB %s", p.name, rate, cpu, mbps, gb)
	}
	b.ReportMetric(tpMedian(lb.rate).med/tpMedian(ha.rate).med, "lbkit-conn/s-x-haproxy")
	b.ReportMetric(tpMedian(lb.cpuConn).med/tpMedian(ha.cpuConn).med, "lbkit-cpu/conn-x-haproxy")
	b.ReportMetric(tpMedian(lb.mbps).med/tpMedian(ha.mbps).med, "lbkit-MB/s-x-haproxy")
	b.ReportMetric(tpMedian(lb.cpuGB).med/tpMedian(ha.cpuGB).med, "lbkit-cpu/GB-x-haproxy")
	if os.Getenv(tpStraceEnv) == "1" {
		if _, err := os.Stat(tpStrace); err != nil {
			b.Logf("strace not installed: no syscall counts")
			return
		}
		for _, p := range procs {
			b.ReportMetric(tpSyscalls(b, p), p.name+"-syscalls/conn")
		}
	}
}

// BenchmarkTCPProxyIdle measures memory per idle proxied connection; see
// the comment at the top of the file. Run with -benchtime=1x.
func BenchmarkTCPProxyIdle(b *testing.B) {
	backs := tpSetup(b)
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv(tpIdleEnv)); err == nil && v > 0 {
		n = v
	}
	if m := tpMaxConns() - 10; n > m {
		b.Logf("RLIMIT_NOFILE is %d: %d idle connections instead of %d", tpFiles, m, n)
		n = m
	}
	got := map[string][]float64{}
	for b.Loop() {
		for r := range tpRounds() {
			names := []string{"lbkit", "haproxy"}
			if r%2 == 1 {
				slices.Reverse(names)
			}
			for _, name := range names {
				var p *tpProc
				if name == "lbkit" {
					p = tpStartChild(b, "lbkit", backs)
				} else {
					p = tpStartHAProxy(b, backs)
				}
				kb := tpIdle(b, p, n)
				p.stop()
				got[name] = append(got[name], kb)
				b.Logf("round %d %-8s %.2f KB RSS per idle connection (%d connections)", r, name, kb, n)
			}
		}
	}
	for name, kbs := range got {
		s := tpMedian(kbs)
		s.report(b, name, "KB/conn")
		b.Logf("%-8s KB RSS per idle connection %s", name, s)
	}
	b.ReportMetric(tpMedian(got["lbkit"]).med/tpMedian(got["haproxy"]).med, "lbkit-KB/conn-x-haproxy")
}
