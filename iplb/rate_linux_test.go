package iplb

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/netlab"
	"net/netip"
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

// ctStats sums the per-CPU conntrack statistics of h's namespace
// (/proc/net/stat/nf_conntrack), by column name.
func ctStats(b *testing.B, h *netlab.Host) map[string]uint64 {
	out := map[string]uint64{}
	require.NoError(b, h.Do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/stat/nf_conntrack")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		names := strings.Fields(lines[0])
		for _, l := range lines[1:] {
			for i, v := range strings.Fields(l) {
				x, _ := strconv.ParseUint(v, 16, 64)
				if names[i] != "entries" {
					out[names[i]] += x
				} else {
					out[names[i]] = x
				}
			}
		}
		return nil
	}))
	return out
}

// BenchmarkNewConns compares new connections per second (wrk, one
// request per connection, "Connection: close") over the same lab path in
// interleaved rounds: straight to a backend, routed through the
// balancer's namespace without NAT (the fair baseline: the same hop and
// conntrack), and through iplb's NAT: to the same one backend, to three
// by round robin (the zero key) and by 5-tuple hash, and FullNAT. Each round runs every path for
// 2 s, in an order rotated round by round; the report gives medians
// and ranges, and per connection: CPU time (wrk's and this process's),
// NET_RX softirqs and the growth of the balancer namespace's conntrack
// table, and its failed inserts, drops and early drops. Run with -benchtime=1x. It
// skips without wrk.
func BenchmarkNewConns(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("iplb: wrk not installed (apt-get install wrk)")
	}
	l := newLab(b)
	lb := l.newBalancer(b)
	require.NoError(b, l.client.AddAddr(netip.MustParsePrefix("198.18.2.100/24"), "eth0"))
	direct := netip.AddrPortFrom(l.backends[0].host.Addr4(), backendPort)
	one := netip.AddrPortFrom(vip4, 83)
	require.NoError(b, lb.AddService(Service{Name: "one", VIP: one, Pool: poolOf(b, balancer.Backend{Addr: direct})}))
	gw := netip.AddrPortFrom(vip4, 80)
	require.NoError(b, lb.AddService(Service{Name: "gw", VIP: gw, Pool: l.pool(b, false)}))
	fnat := netip.AddrPortFrom(vip4, 81)
	require.NoError(b, lb.AddService(Service{Name: "fnat", VIP: fnat, Mode: FullNAT, Pool: l.pool(b, false)}))
	hashed := netip.AddrPortFrom(vip4, 84)
	require.NoError(b, lb.AddService(Service{Name: "hashed", VIP: hashed, Key: flowKey, Pool: l.pool(b, false)}))
	// The routed baseline goes to be2 on a port of its own: its
	// connections' conntrack entries (TIME_WAIT for two minutes) must not
	// hold the reply tuples (be2:8080 → client:port) the NAT paths' new
	// flows need, or DNAT, which cannot change the source, finds them in
	// use and new connections stall.
	routed := netip.AddrPortFrom(l.backends[1].host.Addr4(), backendPort+1)
	rln, err := l.backends[1].host.Listen("tcp", routed.String())
	require.NoError(b, err)
	rsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "be2") })}
	go rsrv.Serve(rln)
	b.Cleanup(func() { rsrv.Close() })
	require.NoError(b, l.client.AddRoute(netip.PrefixFrom(routed.Addr(), 32), netip.MustParseAddr("198.18.1.1")))

	paths := []struct {
		name string
		addr netip.AddrPort
	}{{"direct", direct}, {"routed", routed}, {"nat-1backend", one}, {"nat", gw}, {"nat-hash", hashed}, {"fullnat", fnat}}
	if only := os.Getenv("LBKIT_RATE_PATHS"); only != "" {
		paths = slices.DeleteFunc(paths, func(p struct {
			name string
			addr netip.AddrPort
		}) bool {
			return !slices.Contains(strings.Split(only, ","), p.name)
		})
	}
	type sample struct{ rate, cpu, softirq, insert, failed, drop, early float64 }
	res := make(map[string][]sample)
	rounds := 5
	if s := os.Getenv("LBKIT_RATE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	for r := range rounds {
		for i := range paths {
			p := paths[(i+r)%len(paths)]
			cmd := exec.Command(wrk, "-t2", "-c32", "-d2s", "--timeout", "5s", "-H", "Connection: close", url(p.addr))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			ct0, irq0, cpu0 := ctStats(b, l.bal), netRXSoftirqs(b), selfCPU(b)
			require.NoError(b, l.client.Start(cmd))
			require.NoError(b, cmd.Wait(), out.String())
			cpu := selfCPU(b) - cpu0 + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			irq, ct := netRXSoftirqs(b)-irq0, ctStats(b, l.bal)
			m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindStringSubmatch(out.String())
			n := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out.String())
			require.NotNil(b, m, out.String())
			require.NotNil(b, n, out.String())
			rate, _ := strconv.ParseFloat(m[1], 64)
			total, _ := strconv.ParseFloat(n[1], 64)
			d := func(k string) float64 { return float64(ct[k]-ct0[k]) / total }
			res[p.name] = append(res[p.name], sample{rate, float64(cpu.Microseconds()) / total, float64(irq) / total, (float64(ct["entries"]) - float64(ct0["entries"])) / total, d("insert_failed"), d("drop"), d("early_drop")})
			if e := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`).FindString(out.String()); e != "" {
				b.Logf("%s: wrk: %s", p.name, e)
			}
		}
		// Let TIME_WAIT entries of this round not crowd the next one's
		// table: report how many the namespace holds.
		b.Logf("round %d: conntrack entries in the balancer's namespace: %d", r+1, ctStats(b, l.bal)["entries"])
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
	fmt.Fprintf(&report, "\n%-13s %-24s %-9s %-16s %-12s %-10s %s\n", "path", "conns/s median [range]", "÷routed", "cpu-µs/conn", "softirq/conn", "ct-entries/conn", "ct fail/drop/early per conn")
	for _, p := range paths {
		ss := res[p.name]
		rm, rlo, rhi := med(pick(ss, func(s sample) float64 { return s.rate }))
		cm, clo, chi := med(pick(ss, func(s sample) float64 { return s.cpu }))
		im, _, _ := med(pick(ss, func(s sample) float64 { return s.softirq }))
		ins, _, _ := med(pick(ss, func(s sample) float64 { return s.insert }))
		f, _, _ := med(pick(ss, func(s sample) float64 { return s.failed }))
		dr, _, _ := med(pick(ss, func(s sample) float64 { return s.drop }))
		e, _, _ := med(pick(ss, func(s sample) float64 { return s.early }))
		fmt.Fprintf(&report, "%-13s %6.0f [%5.0f–%5.0f]   %5.2f    %5.1f [%4.1f–%5.1f] %8.2f    %8.2f   %.3f/%.3f/%.3f\n", p.name, rm, rlo, rhi, rm/base, cm, clo, chi, im, ins, f, dr, e)
	}
	fmt.Print(report.String()) // b.Log cuts a benchmark's log at ten lines
	b.ReportMetric(0, "ns/op")
}
