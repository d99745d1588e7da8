package l2lb

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// netRXSoftirqs returns the NET_RX softirqs run so far, all CPUs.
func netRXSoftirqs(b *testing.B) uint64 {
	data, err := os.ReadFile("/proc/softirqs")
	require.NoError(b, err)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "NET_RX:" {
			var n uint64
			for _, v := range f[1:] {
				x, _ := strconv.ParseUint(v, 10, 64)
				n += x
			}
			return n
		}
	}
	b.Fatal("no NET_RX in /proc/softirqs")
	return 0
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkNewConns compares new connections per second (wrk, one
// request per connection) over the same lab path in interleaved rounds:
// straight to a backend, routed through the balancer's namespace as a
// plain IP router (the fair baseline: the same hop, replies direct as in
// DSR), and through l2lb's VIP (generic XDP). Each round runs every path
// for 2 s in an order rotated round by round; the report gives medians
// and ranges, and per connection: CPU time (wrk's and this process's),
// NET_RX softirqs, and the XDP program's runs and nanoseconds per run
// (BPF run-time statistics, switched on for the run). Run with
// -benchtime=1x. It skips without wrk.
func BenchmarkNewConns(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("l2lb: wrk not installed (apt-get install wrk)")
	}
	l := newDSRLab(b, 2)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	require.NoError(b, err)
	defer stats.Close()
	direct := netip.AddrPortFrom(l.backends[0].Addr4(), 80)
	routed := netip.AddrPortFrom(l.backends[1].Addr4(), 80)
	require.NoError(b, l.lb.Sysctl("net.ipv4.ip_forward", "1"))
	for _, k := range []string{"net.ipv4.conf.all.send_redirects", "net.ipv4.conf.eth0.send_redirects"} {
		require.NoError(b, l.lb.Sysctl(k, "0"))
	}
	require.NoError(b, l.client.Sysctl("net.ipv4.conf.all.accept_redirects", "0"))
	require.NoError(b, l.client.Sysctl("net.ipv4.conf.eth0.accept_redirects", "0"))
	require.NoError(b, l.client.AddRoute(netip.PrefixFrom(routed.Addr(), 32), l.lb.Addr4()))
	paths := []struct {
		name string
		addr netip.AddrPort
	}{{"direct", direct}, {"routed", routed}, {"l2lb", netip.AddrPortFrom(labVIP4, 80)}}
	type sample struct{ rate, cpu, softirq, runs, ns float64 }
	res := make(map[string][]sample)
	rounds := 5
	if s := os.Getenv("LBKIT_RATE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	prog := l.bal.dp.objs.L2lbXdp
	for r := range rounds {
		for i := range paths {
			p := paths[(i+r)%len(paths)]
			cmd := exec.Command(wrk, "-t2", "-c32", "-d2s", "--timeout", "5s", "-H", "Connection: close", "http://"+p.addr.String()+"/name")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			ps0, err := prog.Stats()
			require.NoError(b, err)
			irq0, cpu0 := netRXSoftirqs(b), selfCPU(b)
			require.NoError(b, l.client.Start(cmd))
			require.NoError(b, cmd.Wait(), out.String())
			cpu := selfCPU(b) - cpu0 + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			irq := netRXSoftirqs(b) - irq0
			ps, err := prog.Stats()
			require.NoError(b, err)
			m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindStringSubmatch(out.String())
			n := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out.String())
			require.NotNil(b, m, out.String())
			require.NotNil(b, n, out.String())
			rate, _ := strconv.ParseFloat(m[1], 64)
			total, _ := strconv.ParseFloat(n[1], 64)
			runs := float64(ps.RunCount - ps0.RunCount)
			ns := 0.0
			if runs > 0 {
				ns = float64(ps.Runtime-ps0.Runtime) / runs
			}
			if p.name == "l2lb" {
				ct, err := l.bal.ConnTable()
				require.NoError(b, err)
				fmt.Printf("round %d: l2lb %.0f conns/s, %.0f ns per XDP run, connection table %d/%d\n", r+1, rate, ns, ct.Entries, ct.Size)
			}
			res[p.name] = append(res[p.name], sample{rate, float64(cpu.Microseconds()) / total, float64(irq) / total, runs / total, ns})
			if e := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`).FindString(out.String()); e != "" {
				b.Logf("%s: wrk: %s", p.name, e)
			}
		}
	}
	med := func(xs []float64) (float64, float64, float64) {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2], s[0], s[len(s)-1]
	}
	pick := func(ss []sample, f func(sample) float64) []float64 {
		var out []float64
		for _, s := range ss {
			out = append(out, f(s))
		}
		return out
	}
	base, _, _ := med(pick(res["routed"], func(s sample) float64 { return s.rate }))
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-8s %-24s %-8s %-18s %-13s %s\n", "path", "conns/s median [range]", "÷routed", "cpu-µs/conn", "softirq/conn", "XDP runs/conn, ns/run")
	for _, p := range paths {
		ss := res[p.name]
		rm, rlo, rhi := med(pick(ss, func(s sample) float64 { return s.rate }))
		cm, clo, chi := med(pick(ss, func(s sample) float64 { return s.cpu }))
		im, _, _ := med(pick(ss, func(s sample) float64 { return s.softirq }))
		runs, _, _ := med(pick(ss, func(s sample) float64 { return s.runs }))
		ns, _, _ := med(pick(ss, func(s sample) float64 { return s.ns }))
		fmt.Fprintf(&report, "%-8s %6.0f [%5.0f–%5.0f]   %5.2f   %5.1f [%4.1f–%5.1f]  %8.2f      %5.2f, %4.0f\n", p.name, rm, rlo, rhi, rm/base, cm, clo, chi, im, runs, ns)
	}
	fmt.Print(report.String()) // b.Log cuts a benchmark's log at ten lines
	b.ReportMetric(0, "ns/op")
}
