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
	"github.com/lbkit/lbkit/dnslb"
	"github.com/miekg/dns"
)

// The DNS benchmark loads lbkit's dnslb server, Knot DNS and a plain
// miekg/dns server, all serving an A RRset of four addresses at
// svc.example.test.,
// with the same load generator in the same run: dnsperf when installed,
// else a bounded in-process Go client. It reports each server's queries
// per second and lost queries, and the ratio lbkit/knot.

const (
	dnsPerfBin  = "/usr/bin/dnsperf"
	dnsKnotBin  = "/usr/sbin/knotd"
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

// dnsStartLbkit serves the zone and service with dnslb on a free loopback
// port, one UDP socket per CPU, and returns the address.
func dnsStartLbkit(b *testing.B) string {
	b.Helper()
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	var backends []balancer.Backend
	for _, a := range dnsBackends {
		backends = append(backends, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	if err := pool.Set(backends); err != nil {
		b.Fatal(err)
	}
	s, err := dnslb.New(dnslb.Config{
		Zones:    []dnslb.Zone{{Origin: "example.test.", Records: dnsZoneHead}},
		Services: []dnslb.Service{{Name: dnsQName, Pool: pool}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	udp, tcp, err := dnslb.Listen(ctx, "127.0.0.1:0", runtime.GOMAXPROCS(0))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, []net.Listener{tcp}) }()
	b.Cleanup(func() {
		cancel()
		<-done
		pool.Close()
	})
	return tcp.Addr().String()
}

// dnsStartMiekg serves the same A RRset with a plain miekg/dns server
// and handler (one UDP socket, a dns.Msg built per query): the baseline a
// Go DNS server starts from.
func dnsStartMiekg(b *testing.B) string {
	b.Helper()
	var rrs []dns.RR
	for _, a := range dnsBackends {
		ap := netip.MustParseAddrPort(a)
		rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: dnsQName, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A: ap.Addr().AsSlice()})
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 && dns.CanonicalName(r.Question[0].Name) == dnsQName && r.Question[0].Qtype == dns.TypeA {
			m.Answer = rrs
		} else {
			m.Rcode = dns.RcodeRefused
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	<-started
	b.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return pc.LocalAddr().String()
}

// dnsStartKnot runs knotd in the foreground on a free loopback port with
// the same zone and returns its address and PID. It is killed by PID at
// cleanup.
func dnsStartKnot(b *testing.B) (string, int) {
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
	cmd := exec.Command(dnsKnotBin, "-c", filepath.Join(dir, "knot.conf"))
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
			cmd.Process.Kill()
			<-exited
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(20 * time.Second); ; {
		m := new(dns.Msg)
		m.SetQuestion(dnsQName, dns.TypeA)
		c := &dns.Client{Timeout: 500 * time.Millisecond}
		if r, _, err := c.Exchange(m, addr); err == nil && len(r.Answer) == 4 {
			return addr, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatal("knotd did not start")
		}
		select {
		case <-exited:
			b.Fatal("knotd exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
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
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	b.Fatal("no free port")
	return 0
}

// dnsProcCPU returns the user+system CPU time process pid has used, from
// /proc/<pid>/stat (clock ticks of 10 ms).
func dnsProcCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// dnsSelfCPU returns the user+system CPU time this process has used.
func dnsSelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// dnsResult is one load run.
type dnsResult struct {
	qps          float64
	sent, lost   int64
	lossFraction float64
	cpu          time.Duration // the server's CPU time during the run
}

var (
	dnsPerfQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	dnsPerfSent = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	dnsPerfLost = regexp.MustCompile(`Queries lost:\s+(\d+)`)
)

// dnsLoad runs the load generator against addr for dnsSeconds.
func dnsLoad(b *testing.B, addr string) dnsResult {
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
	args := []string{"-s", host, "-p", port, "-d", qfile, "-l", strconv.Itoa(dnsSeconds), "-t", "1"}
	// LBKIT_DNSPERF_ARGS adds dnsperf flags, e.g. "-c 4 -T 2 -q 500".
	args = append(args, strings.Fields(os.Getenv("LBKIT_DNSPERF_ARGS"))...)
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
	var sent, got atomic.Int64
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
				inflight--
			}
		})
	}
	start := time.Now()
	wg.Wait()
	el := time.Since(start)
	r := dnsResult{qps: float64(got.Load()) / el.Seconds(), sent: sent.Load(), lost: sent.Load() - got.Load()}
	if r.sent > 0 {
		r.lossFraction = float64(r.lost) / float64(r.sent)
	}
	return r
}

// dnsRounds is how many load runs each server gets per iteration,
// alternating between them, so a burst of load from elsewhere on a shared
// machine does not land on one server only; the median run counts.
const dnsRounds = 3

// BenchmarkDNSQPS measures UDP queries per second answered by lbkit's
// dnslb and by Knot DNS for the same A RRset, in the same run, with
// dnsRounds alternating load runs of dnsSeconds each (the median counts),
// and the CPU each server spent per answered query. Run with
// -benchtime=1x: each iteration is a full set of load runs.
func BenchmarkDNSQPS(b *testing.B) {
	lbkit := dnsStartLbkit(b)
	miekg := dnsStartMiekg(b)
	knot, knotPID := dnsStartKnot(b)
	var ls, ms, ks []dnsResult
	for range b.N {
		for range dnsRounds {
			c0 := dnsSelfCPU()
			l := dnsLoad(b, lbkit)
			l.cpu = dnsSelfCPU() - c0
			ls = append(ls, l)
			c0 = dnsProcCPU(b, knotPID)
			k := dnsLoad(b, knot)
			k.cpu = dnsProcCPU(b, knotPID) - c0
			ks = append(ks, k)
			c0 = dnsSelfCPU()
			m := dnsLoad(b, miekg)
			m.cpu = dnsSelfCPU() - c0
			ms = append(ms, m)
		}
	}
	l, k, m := dnsMedian(ls), dnsMedian(ks), dnsMedian(ms)
	b.ReportMetric(m.qps, "miekg-qps")
	b.ReportMetric(float64(m.cpu.Nanoseconds())/(m.qps*dnsSeconds), "miekg-cpu-ns/q")
	b.ReportMetric(l.qps, "lbkit-qps")
	b.ReportMetric(k.qps, "knot-qps")
	b.ReportMetric(l.qps/k.qps, "lbkit/knot")
	b.ReportMetric(float64(l.lost), "lbkit-lost")
	b.ReportMetric(float64(k.lost), "knot-lost")
	b.ReportMetric(100*l.lossFraction, "lbkit-lost-%")
	b.ReportMetric(100*k.lossFraction, "knot-lost-%")
	// CPU per answered query: the steadiest figure on a shared machine.
	b.ReportMetric(float64(l.cpu.Nanoseconds())/(l.qps*dnsSeconds), "lbkit-cpu-ns/q")
	b.ReportMetric(float64(k.cpu.Nanoseconds())/(k.qps*dnsSeconds), "knot-cpu-ns/q")
	for i := range ls {
		b.Logf("round %d: lbkit %.0f q/s (lost %d), knot %.0f q/s (lost %d), plain miekg/dns %.0f q/s (lost %d)",
			i+1, ls[i].qps, ls[i].lost, ks[i].qps, ks[i].lost, ms[i].qps, ms[i].lost)
	}
}

// dnsMedian returns the run with the median QPS.
func dnsMedian(rs []dnsResult) dnsResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b dnsResult) int { return cmp.Compare(a.qps, b.qps) })
	return s[len(s)/2]
}
