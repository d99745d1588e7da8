package tcpproxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// haproxyPath is where the benchmarks look for the peer.
const haproxyPath = "/usr/sbin/haproxy"

// startHAProxy starts HAProxy in TCP mode (splice on, two threads) in
// front of backend and returns its address, or "" when HAProxy is not
// installed. It is stopped by its PID when b ends.
func startHAProxy(b *testing.B, backend netip.AddrPort) string {
	b.Helper()
	if _, err := os.Stat(haproxyPath); err != nil {
		b.Logf("HAProxy not installed at %s: no peer figures", haproxyPath)
		return ""
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`global
  maxconn 4000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option splice-auto
listen bench
  bind %s
  server b1 %s
`, addr, backend)
	path := filepath.Join(b.TempDir(), "haproxy.cfg")
	require.NoError(b, os.WriteFile(path, []byte(cfg), 0o644))
	cmd := exec.Command(haproxyPath, "-db", "-f", path)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(b, cmd.Start())
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		cmd.Wait()
	})
	for deadline := time.Now().Add(wait); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			b.Fatalf("haproxy did not start: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkThroughput streams 1 MiB per op straight to a backend (a
// sink that counts bytes), through the proxy and, when installed, through
// HAProxy in TCP mode, for MB/s side by side (vs-direct: share of the
// direct rate).
func BenchmarkThroughput(b *testing.B) {
	sink := startBackend(b, func(c net.Conn) {
		c.SetDeadline(time.Time{})
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	_, proxied := startProxy(b, Config{Pool: newPool(b, nil, sink.addr)})
	runs := []struct{ name, addr string }{{"direct", sink.addr.String()}, {"proxy", proxied}}
	if ha := startHAProxy(b, sink.addr); ha != "" {
		runs = append(runs, struct{ name, addr string }{"haproxy", ha})
	}
	chunk := make([]byte, 1<<20)
	var direct float64 // MB/s of the last direct run
	for _, tc := range runs {
		b.Run(tc.name, func(b *testing.B) {
			c := dial(b, tc.addr)
			c.SetDeadline(time.Time{})
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			mbps := float64(b.N) * float64(len(chunk)) / 1e6 / time.Since(start).Seconds()
			if tc.name == "direct" {
				direct = mbps
			} else if direct > 0 {
				b.ReportMetric(mbps/direct, "vs-direct")
			}
			c.CloseWrite()
			reply, err := io.ReadAll(c)
			if err != nil || string(reply) != fmt.Sprint(int64(b.N)*int64(len(chunk))) {
				b.Fatalf("sink saw %q, err %v", reply, err)
			}
		})
	}
}

// BenchmarkConnections measures connection setup: connect, one byte
// each way, close, straight to the backend, through the proxy and, when
// installed, through HAProxy.
func BenchmarkConnections(b *testing.B) {
	be := startBackend(b, echo)
	_, proxied := startProxy(b, Config{Pool: newPool(b, nil, be.addr)})
	runs := []struct{ name, addr string }{{"direct", be.addr.String()}, {"proxy", proxied}}
	if ha := startHAProxy(b, be.addr); ha != "" {
		runs = append(runs, struct{ name, addr string }{"haproxy", ha})
	}
	var direct float64 // conns/s of the last direct run
	for _, tc := range runs {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 1)
				for pb.Next() {
					c, err := net.DialTimeout("tcp", tc.addr, wait)
					if err != nil {
						b.Error(err)
						return
					}
					c.SetDeadline(time.Now().Add(wait))
					if _, err := c.Write(buf); err != nil {
						b.Error(err)
					} else if _, err := io.ReadFull(c, buf); err != nil {
						b.Error(err)
					}
					c.Close()
				}
			})
			rate := float64(b.N) / time.Since(start).Seconds()
			b.ReportMetric(rate, "conns/s")
			if tc.name == "direct" {
				direct = rate
			} else if direct > 0 {
				b.ReportMetric(rate/direct, "vs-direct")
			}
		})
	}
}
