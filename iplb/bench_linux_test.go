package iplb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/stretchr/testify/require"
)

// BenchmarkApply measures one change (a backend's health flips) applied
// to the kernel: the plan, the Maglev table build, the batch of changed
// slots and the commit. The initial fill is reported as fill-ms.
func BenchmarkApply(b *testing.B) {
	netlab.RequireRoot(b)
	lab, err := netlab.New(b, netlab.Config{})
	require.NoError(b, err)
	host, err := lab.AddHost("bal")
	require.NoError(b, err)
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			lb := serveBalancer(b, Config{NetNS: int(host.NS()), Logger: quietLogger()})
			// The pool's own picker is not what is measured: give it a
			// trivial builder, so the time is iplb's (plan, Maglev table,
			// batch, commit).
			pool := balancer.MustNew(balancer.Config{Builder: balancer.BuilderFunc(func([]balancer.Weighted) balancer.Picker {
				return balancer.ErrPicker(balancer.ErrNoBackend)
			})})
			var bs []balancer.Backend
			for i := range n {
				bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(2 + i/250), byte(1 + i%250)}), 8080)})
			}
			require.NoError(b, pool.Set(bs))
			start := b.Elapsed()
			err = lb.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("198.19.0.10:80"), Pool: pool})
			require.NoError(b, err)
			fill := b.Elapsed() - start
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				pool.SetHealthy(bs[i%n].Addr, i/n%2 == 1)
				i++
				if err := lb.Sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(fill.Microseconds())/1000, "fill-ms")
			b.ReportMetric(float64(autoSize(n)), "slots")
		})
	}
}

// BenchmarkLab measures new connections per second (one HTTP request per
// connection) and requests per second (keep-alive) from the client
// namespace: straight to one backend, and through the balancer in each
// mode. Run with -benchtime=2000x or so; each op is a real request.
func BenchmarkLab(b *testing.B) {
	l := newLab(b)
	lb := l.newBalancer(b)
	// Direct path: the client also gets an address on the backends'
	// subnet, so it reaches be1 on-link, without the balancer.
	require.NoError(b, l.client.AddAddr(netip.MustParsePrefix("198.18.2.100/24"), "eth0"))
	direct := netip.AddrPortFrom(l.backends[0].host.Addr4(), backendPort)
	gw := netip.AddrPortFrom(vip4, 80)
	fnat := netip.AddrPortFrom(vip4, 81)
	err := lb.AddService(Service{Name: "gw", VIP: gw, Pool: l.pool(b, false)})
	require.NoError(b, err)
	err = lb.AddService(Service{Name: "fnat", VIP: fnat, Mode: FullNAT, Pool: l.pool(b, false)})
	require.NoError(b, err)

	for _, path := range []struct {
		name string
		addr netip.AddrPort
	}{{"direct", direct}, {"gateway", gw}, {"fullnat", fnat}} {
		for _, keepAlive := range []bool{false, true} {
			what := "conns"
			if keepAlive {
				what = "reqs"
			}
			b.Run(path.name+"/"+what, func(b *testing.B) {
				tr := &http.Transport{DialContext: l.client.DialContext, DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr}
				u := url(path.addr)
				b.SetParallelism(4)
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						resp, err := c.Get(u)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), what+"/s")
			})
		}
	}
}

// BenchmarkWrk drives the lab with wrk (a C load generator, far cheaper
// per request than Go's client) started inside the client namespace:
// straight to one backend, routed through the balancer's namespace
// without NAT, and through the balancer's NAT in each mode, with
// keep-alive (requests/s) and with "Connection: close" (a new connection
// per request: connections/s). Each sub-benchmark runs wrk once for 2 s
// whatever b.N is; run with -benchtime=1x. It skips without wrk.
func BenchmarkWrk(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("iplb: wrk not installed (apt-get install wrk)")
	}
	l := newLab(b)
	lb := l.newBalancer(b)
	require.NoError(b, l.client.AddAddr(netip.MustParsePrefix("198.18.2.100/24"), "eth0"))
	direct := netip.AddrPortFrom(l.backends[0].host.Addr4(), backendPort)
	gw := netip.AddrPortFrom(vip4, 80)
	fnat := netip.AddrPortFrom(vip4, 81)
	err = lb.AddService(Service{Name: "gw", VIP: gw, Pool: l.pool(b, false)})
	require.NoError(b, err)
	err = lb.AddService(Service{Name: "fnat", VIP: fnat, Mode: FullNAT, Pool: l.pool(b, false)})
	require.NoError(b, err)
	// The same single backend as "direct", behind the balancer: the
	// difference is the balancer's hop alone.
	one := netip.AddrPortFrom(vip4, 83)
	err = lb.AddService(Service{Name: "one", VIP: one, Pool: poolOf(b, balancer.Backend{Addr: direct})})
	require.NoError(b, err)
	// be2 routed through the balancer without NAT: the same hop, and the
	// conntrack the nat chains switch on, but no rule, map or rewrite.
	// Against "gateway-1backend" it isolates what nftables NAT costs.
	routed := netip.AddrPortFrom(l.backends[1].host.Addr4(), backendPort)
	require.NoError(b, l.client.AddRoute(netip.PrefixFrom(routed.Addr(), 32), netip.MustParseAddr("198.18.1.1")))
	for _, path := range []struct {
		name string
		addr netip.AddrPort
	}{{"direct", direct}, {"routed", routed}, {"gateway-1backend", one}, {"gateway", gw}, {"fullnat", fnat}} {
		for _, closeConn := range []bool{false, true} {
			what := "reqs"
			if closeConn {
				what = "conns"
			}
			b.Run(path.name+"/"+what, func(b *testing.B) {
				args := []string{"-t2", "-c32", "-d2s", "--timeout", "5s"}
				if closeConn {
					args = append(args, "-H", "Connection: close")
				}
				cmd := exec.Command(wrk, append(args, url(path.addr))...)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				before := selfCPU(b)
				require.NoError(b, l.client.Start(cmd))
				require.NoError(b, cmd.Wait(), out.String())
				// CPU per request: wrk's and this process's (the backends)
				// user and system time, which includes the softirq work of
				// forwarding the packets they send through veth, the bridge
				// and the balancer's namespace. Less noisy than req/s on a
				// shared machine.
				cpu := selfCPU(b) - before + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
				m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindStringSubmatch(out.String())
				require.NotNil(b, m, out.String())
				rate, err := strconv.ParseFloat(m[1], 64)
				require.NoError(b, err)
				n := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out.String())
				require.NotNil(b, n, out.String())
				total, err := strconv.ParseFloat(n[1], 64)
				require.NoError(b, err)
				b.ReportMetric(float64(cpu.Microseconds())/total, "cpu-µs/req")
				if e := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`).FindString(out.String()); e != "" {
					b.Logf("wrk: %s", e)
				}
				b.ReportMetric(rate, what+"/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// selfCPU returns this process's user plus system CPU time so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
