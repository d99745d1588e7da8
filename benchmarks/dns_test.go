package benchmarks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
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
	"github.com/lbkit/lbkit/dnslb"
	"github.com/miekg/dns"
)

// The DNS benchmark loads lbkit's dnslb server, NSD and Knot DNS, each in
// its own process and all serving an A RRset of four addresses at
// svc.example.test., with the same load generator in the same run:
// dnsperf when installed, else a bounded in-process Go client. It reports
// each server's queries per second, mean latency, lost queries and CPU per
// query (from /proc), medians of interleaved rounds with their ranges, at
// three dnsperf settings.

const (
	dnsPerfBin  = "/usr/bin/dnsperf"
	dnsKnotBin  = "/usr/sbin/knotd"
	dnsNSDBin   = "/usr/sbin/nsd"
	dnsSeconds  = 3
	dnsQName    = "svc.example.test."
	dnsZoneHead = `$ORIGIN example.test.
$TTL 300
@   IN SOA ns1 hostmaster 1 3600 600 86400 60
@   IN NS  ns1
ns1 IN A   127.0.0.1
`
	// dnsZoneSvc is what lbkit serves from its pool.
	dnsZoneSvc = `svc 30 IN A 198.18.0.1
svc 30 IN A 198.18.0.2
svc 30 IN A 198.18.0.3
svc 30 IN A 198.18.0.4
`
)

var dnsBackends = []string{"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80"}

// dnsChildEnv, when set in the environment, makes the test binary a
// dnslb server on that address instead of running tests (see TestMain):
// the benchmark runs dnslb in its own process, as NSD and Knot run, so
// each one's CPU is its own. dnsProfileEnv names a CPU profile the child
// writes until it is terminated.
const (
	dnsChildEnv   = "LBKIT_BENCH_DNSLB_ADDR"
	dnsProfileEnv = "LBKIT_BENCH_DNSLB_CPUPROFILE"
	dnsSignEnv    = "LBKIT_BENCH_DNSLB_SIGN" // an algorithm number: sign the zone with a new key
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(dnsChildEnv); addr != "" {
		if err := dnsServeChild(addr, os.Getenv(dnsProfileEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dnsServeChild serves the zone and service with dnslb on addr, one UDP
// socket per CPU, until SIGTERM or SIGINT.
func dnsServeChild(addr, profile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	var backends []balancer.Backend
	for _, a := range dnsBackends {
		backends = append(backends, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	if err := pool.Set(backends); err != nil {
		return err
	}
	zone := dnslb.Zone{Origin: "example.test.", Records: dnsZoneHead}
	if alg := os.Getenv(dnsSignEnv); alg != "" {
		n, err := strconv.Atoi(alg)
		if err != nil {
			return err
		}
		k, err := dnslb.GenerateKey(zone.Origin, uint8(n))
		if err != nil {
			return err
		}
		zone.Keys = []dnslb.SigningKey{k}
	}
	s, err := dnslb.New(dnslb.Config{
		Zones:    []dnslb.Zone{zone},
		Services: []dnslb.Service{{Name: dnsQName, Pool: pool}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return s.ListenAndServe(ctx, addr)
}

// dnsServer is a server under load: a process of its own.
type dnsServer struct {
	name string
	addr string
	pid  int
}

// dnsStartLbkit runs dnslb in a child process (this test binary, see
// TestMain) on a free loopback port, stopped at cleanup; env adds to
// the child's environment.
func dnsStartLbkit(b *testing.B, env ...string) dnsServer {
	b.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", dnsFreePort(b))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), dnsChildEnv+"="+addr), env...)
	cmd.Stderr = os.Stderr
	return dnsServer{"dnslb", addr, dnsStartProcess(b, cmd, addr, syscall.SIGTERM)}
}

// dnsStartProcess starts cmd, waits until it answers the A query at
// addr, and stops it with sig (then waits for it) at cleanup. It
// returns the PID.
func dnsStartProcess(b *testing.B, cmd *exec.Cmd, addr string, sig os.Signal) int {
	b.Helper()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	b.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(sig)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		m := new(dns.Msg)
		m.SetQuestion(dnsQName, dns.TypeA)
		c := &dns.Client{Timeout: 500 * time.Millisecond}
		if r, _, err := c.Exchange(m, addr); err == nil && len(r.Answer) == 4 {
			return cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not start", cmd.Path)
		}
		select {
		case <-exited:
			b.Fatalf("%s exited", cmd.Path)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dnsStartNSD runs nsd in the foreground on a free loopback port with the
// same zone, one server process per CPU (each with its own socket), and
// response rate limiting off.
func dnsStartNSD(b *testing.B) dnsServer {
	b.Helper()
	if _, err := os.Stat(dnsNSDBin); err != nil {
		b.Skipf("nsd not installed at %s (Debian package nsd)", dnsNSDBin)
	}
	dir := b.TempDir()
	port := dnsFreePort(b)
	conf := fmt.Sprintf(`server:
    ip-address: 127.0.0.1
    port: %[2]d
    server-count: %[3]d
    reuseport: yes
    rrl-ratelimit: 0
    username: ""
    chroot: ""
    zonesdir: "%[1]s"
    database: ""
    pidfile: "%[1]s/nsd.pid"
    xfrdfile: "%[1]s/xfrd.state"
    zonelistfile: "%[1]s/zone.list"
    xfrdir: "%[1]s"
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: example.test.
    zonefile: "%[1]s/zone.txt"
`, dir, port, runtime.NumCPU())
	if err := os.WriteFile(filepath.Join(dir, "nsd.conf"), []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zone.txt"), []byte(dnsZoneHead+dnsZoneSvc), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(dnsNSDBin, "-d", "-c", filepath.Join(dir, "nsd.conf"))
	return dnsServer{"nsd", addr, dnsStartProcess(b, cmd, addr, syscall.SIGTERM)}
}

// dnsStartKnot runs knotd in the foreground on a free loopback port with
// the same zone (its default: a UDP worker per CPU).
func dnsStartKnot(b *testing.B) dnsServer {
	b.Helper()
	if _, err := os.Stat(dnsKnotBin); err != nil {
		b.Skipf("knotd not installed at %s (Debian package knot)", dnsKnotBin)
	}
	dir := b.TempDir()
	port := dnsFreePort(b)
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    listen: 127.0.0.1@%[2]d
%[3]sdatabase:
    storage: "%[1]s"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "%[1]s"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: example.test.
    file: "zone.txt"
`, dir, port, dnsKnotUser())
	if err := os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zone.txt"), []byte(dnsZoneHead+dnsZoneSvc), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(dnsKnotBin, "-c", filepath.Join(dir, "knot.conf"))
	return dnsServer{"knot", addr, dnsStartProcess(b, cmd, addr, syscall.SIGKILL)}
}

// dnsKnotUser keeps knotd root when run as root (it would switch to user
// knot, which cannot read the temp dir); otherwise it runs as the caller.
func dnsKnotUser() string {
	if os.Geteuid() == 0 {
		return "    user: root:root\n"
	}
	return ""
}

func dnsFreePort(b *testing.B) int {
	b.Helper()
	for range 20 {
		// TCP first: the kernel then picks a port no TCP socket uses,
		// outgoing connections included.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	b.Fatal("no free port")
	return 0
}

// dnsProcCPU returns the user+system CPU time process pid and its
// children (NSD forks a server per CPU) have used, from /proc (clock
// ticks of 10 ms). A process that has gone counts as zero.
func dnsProcCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	total := time.Duration(ut+st) * 10 * time.Millisecond
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		kids, _ := os.ReadFile(t)
		for _, k := range strings.Fields(string(kids)) {
			if kp, err := strconv.Atoi(k); err == nil {
				total += dnsProcCPU(kp)
			}
		}
	}
	return total
}

// dnsResult is one load run.
type dnsResult struct {
	qps          float64
	latency      time.Duration // mean
	sent, lost   int64
	lossFraction float64
	cpu          time.Duration // the server's CPU time during the run
}

var (
	dnsPerfQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	dnsPerfSent = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	dnsPerfLost = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	dnsPerfLat  = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
)

// dnsLoad runs the load generator against addr for dnsSeconds, with the
// extra dnsperf flags args.
func dnsLoad(b *testing.B, addr string, args ...string) dnsResult {
	b.Helper()
	if _, err := os.Stat(dnsPerfBin); err != nil {
		return dnsGoLoad(b, addr)
	}
	host, port, _ := net.SplitHostPort(addr)
	qfile := filepath.Join(b.TempDir(), "queries.txt")
	if err := os.WriteFile(qfile, []byte(dnsQName+" A\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), (dnsSeconds+30)*time.Second)
	defer cancel()
	args = append([]string{"-s", host, "-p", port, "-d", qfile, "-l", strconv.Itoa(dnsSeconds), "-t", "1"}, args...)
	out, err := exec.CommandContext(ctx, dnsPerfBin, args...).CombinedOutput()
	if err != nil {
		b.Fatalf("dnsperf: %v\n%s", err, out)
	}
	var r dnsResult
	if m := dnsPerfQPS.FindSubmatch(out); m != nil {
		r.qps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := dnsPerfSent.FindSubmatch(out); m != nil {
		r.sent, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := dnsPerfLost.FindSubmatch(out); m != nil {
		r.lost, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := dnsPerfLat.FindSubmatch(out); m != nil {
		sec, _ := strconv.ParseFloat(string(m[1]), 64)
		r.latency = time.Duration(sec * float64(time.Second))
	}
	if r.qps == 0 || r.sent == 0 {
		b.Fatalf("dnsperf output not understood:\n%s", out)
	}
	r.lossFraction = float64(r.lost) / float64(r.sent)
	return r
}

// dnsGoLoad is the fallback load generator: 8 clients, each with a UDP
// socket and 16 queries in flight, for dnsSeconds; a query unanswered
// after 1 s is lost.
func dnsGoLoad(b *testing.B, addr string) dnsResult {
	b.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dnsQName, dns.TypeA)
	pkt, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	var sent, got, waited atomic.Int64
	stop := time.Now().Add(dnsSeconds * time.Second)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c, err := net.Dial("udp", addr)
			if err != nil {
				return
			}
			defer c.Close()
			q := append([]byte{}, pkt...)
			buf := make([]byte, 1500)
			inflight := 0
			for time.Now().Before(stop) || inflight > 0 {
				t0 := time.Now()
				for inflight < 16 && time.Now().Before(stop) {
					if _, err := c.Write(q); err != nil {
						return
					}
					sent.Add(1)
					inflight++
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(buf); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						return // the rest are lost
					}
					return
				}
				got.Add(1)
				waited.Add(int64(time.Since(t0)))
				inflight--
			}
		})
	}
	start := time.Now()
	wg.Wait()
	el := time.Since(start)
	r := dnsResult{qps: float64(got.Load()) / el.Seconds(), sent: sent.Load(), lost: sent.Load() - got.Load()}
	if n := got.Load(); n > 0 {
		r.latency = time.Duration(waited.Load() / n)
	}
	if r.sent > 0 {
		r.lossFraction = float64(r.lost) / float64(r.sent)
	}
	return r
}

// dnsRounds is how many load runs each server gets per setting and
// iteration, rotating the order each round, so a burst of load from
// elsewhere on a shared machine does not land on one server only; the
// median run counts and the range is reported.
const dnsRounds = 3

// dnsSettings are the dnsperf settings the benchmark runs: its defaults
// (one client, 100 queries outstanding), four clients with 500
// outstanding (latency under load), and the same on two threads.
var dnsSettings = []struct {
	name string
	args []string
}{
	{"defaults", nil},
	{"c4-q500", []string{"-c", "4", "-q", "500"}},
	{"c4-T2-q500", []string{"-c", "4", "-T", "2", "-q", "500"}},
}

// BenchmarkDNSQPS measures UDP queries per second, mean latency, loss and
// CPU per answered query of lbkit's dnslb, NSD and Knot DNS, each in its
// own process, for the same A RRset, at each of dnsSettings, in the same
// run: dnsRounds interleaved load runs of dnsSeconds per server (the
// median counts). Run with -benchtime=1x: each iteration is a full set of
// load runs. With LBKIT_BENCH_DNSLB_CPUPROFILE=file in the environment
// the dnslb process writes a CPU profile of the whole run.
func BenchmarkDNSQPS(b *testing.B) {
	servers := []dnsServer{dnsStartLbkit(b), dnsStartNSD(b), dnsStartKnot(b)}
	for _, st := range dnsSettings {
		b.Run(st.name, func(b *testing.B) {
			runs := make(map[string][]dnsResult)
			for range b.N {
				for round := range dnsRounds {
					for i := range servers {
						sv := servers[(i+round)%len(servers)]
						c0 := dnsProcCPU(sv.pid)
						r := dnsLoad(b, sv.addr, st.args...)
						r.cpu = dnsProcCPU(sv.pid) - c0
						runs[sv.name] = append(runs[sv.name], r)
					}
				}
			}
			qps := func(r dnsResult) float64 { return r.qps / 1000 }
			lat := func(r dnsResult) float64 { return float64(r.latency.Microseconds()) / 1000 }
			cpu := func(r dnsResult) float64 { return float64(r.cpu.Nanoseconds()) / (r.qps * dnsSeconds) / 1000 }
			lost := func(r dnsResult) float64 { return float64(r.lost) }
			med := make(map[string]dnsResult)
			for _, sv := range servers {
				rs := runs[sv.name]
				m := dnsMedian(rs)
				med[sv.name] = m
				b.ReportMetric(m.qps, sv.name+"-qps")
				b.ReportMetric(float64(m.latency.Microseconds()), sv.name+"-latency-µs")
				b.ReportMetric(float64(m.lost), sv.name+"-lost")
				// CPU per answered query: the steadiest figure on a
				// shared machine.
				b.ReportMetric(1000*cpu(m), sv.name+"-cpu-ns/q")
				b.Logf("%s %s: %.1fk q/s (%s), latency %.2f ms (%s), CPU %.2f µs/q (%s), lost %.0f (%s)",
					st.name, sv.name, qps(m), dnsRange(rs, qps), lat(m), dnsRange(rs, lat),
					cpu(m), dnsRange(rs, cpu), lost(m), dnsRange(rs, lost))
			}
			b.ReportMetric(med["dnslb"].qps/med["nsd"].qps, "dnslb/nsd")
			b.ReportMetric(med["dnslb"].qps/med["knot"].qps, "dnslb/knot")
			for i := range runs["dnslb"] {
				l, n, k := runs["dnslb"][i], runs["nsd"][i], runs["knot"][i]
				b.Logf("%s round %d: dnslb/nsd %.2f, dnslb/knot %.2f", st.name, i+1, l.qps/n.qps, l.qps/k.qps)
			}
		})
	}
}

// BenchmarkDNSSigned measures dnslb answering the same A query with the
// DO bit (dnsperf -D) from an unsigned zone and from zones signed online
// with ECDSA P-256 and Ed25519 keys, each in its own process, in
// interleaved rounds (dnsperf defaults; the median counts). The
// service's signatures are cached per pool snapshot, so the signed rate
// is that of copying larger answers. Run with -benchtime=1x.
func BenchmarkDNSSigned(b *testing.B) {
	servers := []dnsServer{dnsStartLbkit(b), dnsStartLbkit(b, dnsSignEnv+"=13"), dnsStartLbkit(b, dnsSignEnv+"=15")}
	names := []string{"unsigned", "ecdsa", "ed25519"}
	runs := make([][]dnsResult, len(servers))
	for range b.N {
		for round := range dnsRounds {
			for j := range servers {
				i := (j + round) % len(servers)
				c0 := dnsProcCPU(servers[i].pid)
				r := dnsLoad(b, servers[i].addr, "-D")
				r.cpu = dnsProcCPU(servers[i].pid) - c0
				runs[i] = append(runs[i], r)
			}
		}
	}
	for i, name := range names {
		m := dnsMedian(runs[i])
		b.ReportMetric(m.qps, name+"-qps")
		b.ReportMetric(float64(m.cpu.Nanoseconds())/(m.qps*dnsSeconds), name+"-cpu-ns/q")
		b.Logf("%s: %.1fk q/s (%s), CPU %.2f µs/q, lost %d", name, m.qps/1000,
			dnsRange(runs[i], func(r dnsResult) float64 { return r.qps / 1000 }),
			float64(m.cpu.Nanoseconds())/(m.qps*dnsSeconds)/1000, m.lost)
	}
}

// dnsRange formats the range of f over rs as "min–max".
func dnsRange(rs []dnsResult, f func(dnsResult) float64) string {
	lo, hi := f(rs[0]), f(rs[0])
	for _, r := range rs[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	return fmt.Sprintf("%.3g–%.3g", lo, hi)
}

// dnsMedian returns the run with the median QPS.
func dnsMedian(rs []dnsResult) dnsResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b dnsResult) int { return cmp.Compare(a.qps, b.qps) })
	return s[len(s)/2]
}
