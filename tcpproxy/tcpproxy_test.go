package tcpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/proxyproto"
)

const tcpWait = 10 * time.Second // generous bound for network waits under load

// tcpBackend is a TCP server on loopback running serve for each
// connection. It counts accepted connections.
type tcpBackend struct {
	ln       net.Listener
	addr     netip.AddrPort
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func tcpStartBackend(t testing.TB, serve func(net.Conn)) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &tcpBackend{ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String()), conns: map[net.Conn]struct{}{}}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Go(func() {
				defer func() {
					b.mu.Lock()
					delete(b.conns, c)
					b.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(tcpWait))
				serve(c)
			})
		}
	})
	t.Cleanup(b.close)
	return b
}

// close stops accepting and closes open connections.
func (b *tcpBackend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func tcpEcho(c net.Conn) { io.Copy(c, c) }

// tcpNamed answers each connection with its name, then echoes.
func tcpNamed(name string) func(net.Conn) {
	return func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(c, c)
	}
}

// tcpStartProxy serves a proxy for cfg on a loopback listener and shuts it
// down when the test ends.
func tcpStartProxy(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := New(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), tcpWait)
		defer cancel()
		p.Shutdown(ctx)
		assert.ErrorIs(t, <-done, ErrServerClosed)
	})
	return p, ln.Addr().String()
}

func tcpDial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, tcpWait)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(tcpWait))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// tcpDeadAddr returns a loopback address where nothing listens.
func tcpDeadAddr(t testing.TB) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

func TestNewTCPValidation(t *testing.T) {
	b := []balancer.Backend{{Addr: netip.MustParseAddrPort("127.0.0.1:1")}}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no backends", Config{}},
		{"dial timeout", Config{Backends: b, DialTimeout: -1}},
		{"attempts", Config{Backends: b, DialAttempts: -1}},
		{"limit", Config{Backends: b, MaxConnsPerBackend: -1}},
		{"proxy protocol", Config{Backends: b, ProxyProtocol: 3}},
		{"duplicate", Config{Backends: append(b, b...)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "tcpproxy: "), err.Error())
		})
	}
}

func TestTCPEcho(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}})
	c := tcpDial(t, addr)
	for i := range 5 {
		msg := fmt.Sprintf("message %d\n", i)
		_, err := io.WriteString(c, msg)
		require.NoError(t, err)
		got, err := bufio.NewReader(io.LimitReader(c, int64(len(msg)))).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, msg, got)
	}
	ep := p.Pool().Endpoint(b.addr)
	assert.EqualValues(t, 1, ep.InFlight(), "Start counted the open connection")
	c.Close()
	require.Eventually(t, func() bool { return ep.InFlight() == 0 }, tcpWait, 5*time.Millisecond, "Done on close")
	assert.EqualValues(t, 1, ep.Requests())
	assert.Zero(t, ep.Failures())
}

// TestTCPHalfClose: the client finishes sending (CloseWrite); the backend
// sees EOF and only then answers; the answer still reaches the client.
func TestTCPHalfClose(t *testing.T) {
	b := tcpStartBackend(t, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c) // until the client's FIN
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes", n)
		c.(*net.TCPConn).CloseWrite()
	})
	for _, idle := range []time.Duration{-1, time.Minute} {
		t.Run(fmt.Sprint("idle=", idle), func(t *testing.T) {
			_, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}, IdleTimeout: idle})
			c := tcpDial(t, addr)
			payload := strings.Repeat("x", 1<<20)
			_, err := io.WriteString(c, payload)
			require.NoError(t, err)
			require.NoError(t, c.CloseWrite())
			reply, err := io.ReadAll(c)
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("got %d bytes", len(payload)), string(reply))
		})
	}
}

// TestTCPBackendHalfClose: the backend sends and closes its side first;
// the client can still send and the backend still receives.
func TestTCPBackendHalfClose(t *testing.T) {
	got := make(chan string, 1)
	b := tcpStartBackend(t, func(c net.Conn) {
		io.WriteString(c, "banner")
		c.(*net.TCPConn).CloseWrite()
		data, _ := io.ReadAll(c)
		got <- string(data)
	})
	_, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}})
	c := tcpDial(t, addr)
	banner, err := io.ReadAll(c) // EOF from the backend's half-close
	require.NoError(t, err)
	assert.Equal(t, "banner", string(banner))
	_, err = io.WriteString(c, "late data")
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	select {
	case s := <-got:
		assert.Equal(t, "late data", s)
	case <-time.After(tcpWait):
		t.Fatal("backend never got the client's data")
	}
}

// tcpObserver records passive outcomes.
type tcpObserver struct {
	mu       sync.Mutex
	failed   map[netip.AddrPort]int
	ok       map[netip.AddrPort]int
	observed atomic.Int64
}

func (o *tcpObserver) Observe(a netip.AddrPort, out health.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failed == nil {
		o.failed, o.ok = map[netip.AddrPort]int{}, map[netip.AddrPort]int{}
	}
	if out.Failed {
		o.failed[a]++
	} else {
		o.ok[a]++
	}
	o.observed.Add(1)
}

func TestTCPDialFailureRetry(t *testing.T) {
	dead := tcpDeadAddr(t)
	b1, b2 := tcpStartBackend(t, tcpNamed("b1")), tcpStartBackend(t, tcpNamed("b2"))
	obs := &tcpObserver{}
	p, addr := tcpStartProxy(t, Config{
		Backends: []balancer.Backend{{Addr: dead}, {Addr: b1.addr}, {Addr: b2.addr}},
		Observer: obs,
	})
	const clients = 60
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr, tcpWait)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(tcpWait))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || (line != "b1\n" && line != "b2\n") {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failed.Load(), "no client connection failed")
	assert.EqualValues(t, clients, b1.accepted.Load()+b2.accepted.Load())
	obs.mu.Lock()
	defer obs.mu.Unlock()
	assert.Positive(t, obs.failed[dead], "dial failures reach the observer")
	assert.Zero(t, obs.failed[b1.addr]+obs.failed[b2.addr])
	assert.Equal(t, clients, obs.ok[b1.addr]+obs.ok[b2.addr])
	assert.EqualValues(t, obs.failed[dead], p.Pool().Endpoint(dead).Failures())
}

func TestTCPAllDialsFail(t *testing.T) {
	obs := &tcpObserver{}
	dead := []balancer.Backend{{Addr: tcpDeadAddr(t)}, {Addr: tcpDeadAddr(t)}, {Addr: tcpDeadAddr(t)}, {Addr: tcpDeadAddr(t)}}
	_, addr := tcpStartProxy(t, Config{Backends: dead, DialAttempts: 2, Observer: obs})
	c := tcpDial(t, addr)
	n, err := c.Read(make([]byte, 1))
	assert.Zero(t, n)
	assert.Error(t, err, "the client connection is closed")
	assert.EqualValues(t, 2, obs.observed.Load(), "bounded tries")
}

func TestTCPNoReadyBackend(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}})
	p.Pool().SetHealthy(b.addr, false)
	c := tcpDial(t, addr)
	_, err := c.Read(make([]byte, 1))
	assert.Error(t, err)
	assert.Zero(t, b.accepted.Load())
}

func TestTCPConnectionLimit(t *testing.T) {
	// Each backend names itself and holds the connection until the
	// client's end of it closes.
	serve := func(name string) func(net.Conn) {
		return func(c net.Conn) {
			io.WriteString(c, name+"\n")
			io.Copy(io.Discard, c)
		}
	}
	b1, b2 := tcpStartBackend(t, serve("b1")), tcpStartBackend(t, serve("b2"))
	p, addr := tcpStartProxy(t, Config{
		Backends:           []balancer.Backend{{Addr: b1.addr}, {Addr: b2.addr}},
		MaxConnsPerBackend: 2,
	})
	seen := map[string]int{}
	var open []net.Conn
	for range 4 {
		c := tcpDial(t, addr)
		open = append(open, c)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		seen[line]++
	}
	assert.Equal(t, map[string]int{"b1\n": 2, "b2\n": 2}, seen, "a full backend is skipped for another")
	assert.Equal(t, 2, p.BackendConns(b1.addr))

	// Both full: the fifth client is turned away without reaching them.
	c := tcpDial(t, addr)
	_, err := c.Read(make([]byte, 1))
	assert.Error(t, err)
	assert.EqualValues(t, 4, b1.accepted.Load()+b2.accepted.Load())

	// Slots free up when connections end.
	open[0].Close()
	require.Eventually(t, func() bool { return p.BackendConns(b1.addr)+p.BackendConns(b2.addr) == 3 }, tcpWait, 5*time.Millisecond)
	for _, c := range open[1:] {
		c.Close()
	}
	require.Eventually(t, func() bool { return p.BackendConns(b1.addr)+p.BackendConns(b2.addr) == 0 }, tcpWait, 5*time.Millisecond)
}

func TestTCPProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			got := make(chan proxyproto.Header, 1)
			b := tcpStartBackend(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				h, err := proxyproto.Read(br)
				if err != nil {
					io.WriteString(c, err.Error())
					return
				}
				got <- h
				io.Copy(c, br) // the payload follows the header
			})
			_, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}, ProxyProtocol: v})
			c := tcpDial(t, addr)
			_, err := io.WriteString(c, "ping")
			require.NoError(t, err)
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			require.NoError(t, err)
			assert.Equal(t, "ping", string(buf))
			h := <-got
			assert.EqualValues(t, v, h.Version)
			assert.Equal(t, proxyproto.TCP, h.Transport)
			assert.Equal(t, c.LocalAddr().String(), h.Source.String(), "the client's address")
			assert.Equal(t, addr, h.Destination.String(), "the address the client connected to")
		})
	}
}

func TestTCPSourceHash(t *testing.T) {
	var backends []balancer.Backend
	for i := range 3 {
		b := tcpStartBackend(t, tcpNamed(fmt.Sprint("b", i)))
		backends = append(backends, balancer.Backend{Addr: b.addr})
	}
	_, addr := tcpStartProxy(t, Config{Backends: backends, SourceHash: true})
	from := func(src string) string {
		d := net.Dialer{Timeout: tcpWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(tcpWait))
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		return line
	}
	spread := map[string]bool{}
	for i := 1; i <= 12; i++ {
		src := fmt.Sprintf("127.0.%d.%d", i, i)
		first := from(src)
		for range 3 {
			assert.Equal(t, first, from(src), "source %s keeps its backend", src)
		}
		spread[first] = true
	}
	assert.Greater(t, len(spread), 1)
}

func TestTCPIdleTimeout(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	_, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b.addr}}, IdleTimeout: 100 * time.Millisecond})
	c := tcpDial(t, addr)
	_, err := io.WriteString(c, "x")
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	// Now silent on both sides: the proxy closes the connection.
	_, err = c.Read(buf)
	assert.ErrorIs(t, err, io.EOF)
}

func TestTCPShutdownDrains(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, err := New(Config{Backends: []balancer.Backend{{Addr: b.addr}}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background(), ln) }()

	c := tcpDial(t, ln.Addr().String())
	_, err = io.WriteString(c, "a")
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(t, err)

	shut := make(chan error, 1)
	go func() { shut <- p.Shutdown(context.Background()) }()
	require.ErrorIs(t, <-served, ErrServerClosed, "Serve returns once Shutdown closed the listener")

	// New connections are refused; the open one keeps working.
	_, err = net.DialTimeout("tcp", ln.Addr().String(), tcpWait)
	assert.Error(t, err)
	_, err = io.WriteString(c, "b")
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "b", string(buf))
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a connection open", err)
	default:
	}
	c.Close()
	select {
	case err := <-shut:
		assert.NoError(t, err)
	case <-time.After(tcpWait):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
	assert.ErrorIs(t, p.Serve(context.Background(), tcpListen(t)), ErrServerClosed)
}

func tcpListen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

func TestTCPShutdownForced(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, err := New(Config{Backends: []balancer.Backend{{Addr: b.addr}}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ln := tcpListen(t)
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background(), ln) }()
	c := tcpDial(t, ln.Addr().String())
	_, err = io.WriteString(c, "a")
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- p.Shutdown(ctx) }()
	<-served
	cancel()
	assert.ErrorIs(t, <-shut, context.Canceled)
	_, err = c.Read(make([]byte, 1))
	assert.Error(t, err, "the connection left open was closed")
}

func TestTCPServeContext(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, err := New(Config{Backends: []balancer.Backend{{Addr: b.addr}}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ln := tcpListen(t)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	c := tcpDial(t, ln.Addr().String())
	_, err = io.WriteString(c, "a")
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(t, err)
	cancel()
	assert.ErrorIs(t, <-served, context.Canceled)
	_, err = c.Read(make([]byte, 1))
	assert.Error(t, err, "Serve closes its connections when ctx ends")
	require.NoError(t, p.Shutdown(context.Background()))
}

func TestTCPListenAndServe(t *testing.T) {
	b := tcpStartBackend(t, tcpEcho)
	p, err := New(Config{Backends: []balancer.Backend{{Addr: b.addr}}})
	require.NoError(t, err)
	err = p.ListenAndServe(context.Background(), "198.18.0.1:bad")
	assert.Error(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, p.ListenAndServe(ctx, "127.0.0.1:0"), context.Canceled)
}

// TestTCPHealthDriven: a backend killed while a checker drives the pool
// leaves the ready set, and clients keep connecting to the live ones.
func TestTCPHealthDriven(t *testing.T) {
	b1, b2 := tcpStartBackend(t, tcpNamed("b1")), tcpStartBackend(t, tcpNamed("b2"))
	chk, err := health.New(health.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer chk.Close()
	p, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b1.addr}, {Addr: b2.addr}}, Observer: chk})
	for _, a := range []netip.AddrPort{b1.addr, b2.addr} {
		require.NoError(t, chk.SetTarget(health.Target{Addr: a, Probe: health.TCP{}, Interval: 50 * time.Millisecond, Fall: 1, Rise: 1, Initial: health.Healthy}))
	}
	stop := chk.Drive(p.Pool())
	defer stop()

	b1.close()
	require.Eventually(t, func() bool { return len(p.Pool().Snapshot().Ready) == 1 }, tcpWait, 5*time.Millisecond)
	for range 10 {
		c := tcpDial(t, addr)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "b2\n", line)
		c.Close()
	}
}

func TestTCPAddrPort(t *testing.T) {
	assert.Equal(t, "198.18.0.1:80", tcpAddrPort(&net.TCPAddr{IP: net.ParseIP("::ffff:198.18.0.1"), Port: 80}).String())
	assert.False(t, tcpAddrPort(nil).IsValid())
	assert.Equal(t, "[::1]:5", tcpAddrPort(&net.UDPAddr{IP: net.IPv6loopback, Port: 5}).String())
	assert.True(t, errors.Is(fmt.Errorf("x: %w", ErrNoBackend), ErrNoBackend))
}

// tcpHAProxy is where the benchmarks look for the peer.
const tcpHAProxy = "/usr/sbin/haproxy"

// tcpStartHAProxy starts HAProxy in TCP mode (splice on, two threads) in
// front of backend and returns its address, or "" when HAProxy is not
// installed. It is stopped by its PID when b ends.
func tcpStartHAProxy(b *testing.B, backend netip.AddrPort) string {
	b.Helper()
	if _, err := os.Stat(tcpHAProxy); err != nil {
		b.Logf("HAProxy not installed at %s: no peer figures", tcpHAProxy)
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
	cmd := exec.Command(tcpHAProxy, "-db", "-f", path)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(b, cmd.Start())
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		cmd.Wait()
	})
	for deadline := time.Now().Add(tcpWait); ; {
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

// BenchmarkTCPThroughput streams 1 MiB per op straight to a backend (a
// sink that counts bytes), through the proxy and, when installed, through
// HAProxy in TCP mode, for MB/s side by side (vs-direct: share of the
// direct rate).
func BenchmarkTCPThroughput(b *testing.B) {
	sink := tcpStartBackend(b, func(c net.Conn) {
		c.SetDeadline(time.Time{})
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	_, proxied := tcpStartProxy(b, Config{Backends: []balancer.Backend{{Addr: sink.addr}}})
	runs := []struct{ name, addr string }{{"direct", sink.addr.String()}, {"proxy", proxied}}
	if ha := tcpStartHAProxy(b, sink.addr); ha != "" {
		runs = append(runs, struct{ name, addr string }{"haproxy", ha})
	}
	chunk := make([]byte, 1<<20)
	var direct float64 // MB/s of the last direct run
	for _, tc := range runs {
		b.Run(tc.name, func(b *testing.B) {
			c := tcpDial(b, tc.addr)
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

// BenchmarkTCPConnections measures connection setup: connect, one byte
// each way, close, straight to the backend, through the proxy and, when
// installed, through HAProxy.
func BenchmarkTCPConnections(b *testing.B) {
	echo := tcpStartBackend(b, tcpEcho)
	_, proxied := tcpStartProxy(b, Config{Backends: []balancer.Backend{{Addr: echo.addr}}})
	runs := []struct{ name, addr string }{{"direct", echo.addr.String()}, {"proxy", proxied}}
	if ha := tcpStartHAProxy(b, echo.addr); ha != "" {
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
					c, err := net.DialTimeout("tcp", tc.addr, tcpWait)
					if err != nil {
						b.Error(err)
						return
					}
					c.SetDeadline(time.Now().Add(tcpWait))
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

func Example() {
	// A backend that answers "hello, " + what it reads.
	backend, _ := net.Listen("tcp", "127.0.0.1:0")
	defer backend.Close()
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		name, _ := io.ReadAll(c) // until the client half-closes
		fmt.Fprintf(c, "hello, %s", name)
	}()

	p, err := New(Config{
		Backends: []balancer.Backend{{Addr: netip.MustParseAddrPort(backend.Addr().String())}},
	})
	if err != nil {
		panic(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(context.Background(), ln)
	defer p.Shutdown(context.Background())

	c, _ := net.Dial("tcp", ln.Addr().String())
	defer c.Close()
	io.WriteString(c, "proxy")
	c.(*net.TCPConn).CloseWrite()
	reply, _ := io.ReadAll(c)
	fmt.Println(string(reply))
	// Output:
	// hello, proxy
}

func TestTCPWeights(t *testing.T) {
	b1, b2 := tcpStartBackend(t, tcpNamed("b1")), tcpStartBackend(t, tcpNamed("b2"))
	_, addr := tcpStartProxy(t, Config{Backends: []balancer.Backend{{Addr: b1.addr, Weight: 1}, {Addr: b2.addr, Weight: 3}}})
	counts := map[string]int{}
	for range 200 {
		c := tcpDial(t, addr)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		counts[line]++
		c.Close()
	}
	assert.InDelta(t, 50, counts["b1\n"], 20, "%v", counts)
	assert.InDelta(t, 150, counts["b2\n"], 20, "%v", counts)
}

// TestTCPIdleOneWay: a connection on which only the backend talks (a
// server push, a download) is not idle; once it stops, it is. The copy
// loop runs over in-memory pipes in a synctest bubble, so the idle rounds
// run on the fake clock.
func TestTCPIdleOneWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 500 * time.Millisecond
		p := &Server{idle: idle}
		client, proxyClient := net.Pipe()
		proxyBackend, backend := net.Pipe()
		start := time.Now()
		quietc := make(chan time.Time, 1)
		go func() {
			defer backend.Close()
			for range 40 { // 2 s of pushes, 50 ms apart: far more often than idle
				if _, err := io.WriteString(backend, "."); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			io.WriteString(backend, "done")
			quietc <- time.Now()
			io.Copy(io.Discard, backend) // then silence until the proxy closes
		}()
		errc := make(chan error, 1)
		go func() { errc <- p.pipe(proxyClient, proxyBackend) }()

		got, err := io.ReadAll(client) // the client never writes
		require.NoError(t, err, "the proxy ends the connection once idle")
		assert.Equal(t, strings.Repeat(".", 40)+"done", string(got), "the one-way stream was not cut")
		assert.ErrorIs(t, <-errc, os.ErrDeadlineExceeded)
		closed := time.Since(<-quietc)
		assert.GreaterOrEqual(t, closed, idle, "not closed before it was idle for IdleTimeout")
		assert.LessOrEqual(t, closed, 2*idle, "closed within twice IdleTimeout")
		assert.Greater(t, time.Since(start), 2*time.Second)
		client.Close()
	})
}
