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
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/proxyproto"
)

const wait = 10 * time.Second // generous bound for network waits under load

// backend is a TCP server on loopback running serve for each
// connection. It counts accepted connections.
type backend struct {
	ln       net.Listener
	addr     netip.AddrPort
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func startBackend(t testing.TB, serve func(net.Conn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &backend{ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String()), conns: map[net.Conn]struct{}{}}
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
				c.SetDeadline(time.Now().Add(wait))
				serve(c)
			})
		}
	})
	t.Cleanup(b.close)
	return b
}

// close stops accepting and closes open connections.
func (b *backend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func echo(c net.Conn) { io.Copy(c, c) }

// named answers each connection with its name, then echoes.
func named(name string) func(net.Conn) {
	return func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(c, c)
	}
}

// newPool returns a pool over addrs (round robin when b is nil), every
// member healthy.
func newPool(t testing.TB, b balancer.Builder, addrs ...netip.AddrPort) *balancer.Pool {
	t.Helper()
	if b == nil {
		b = roundrobin.Builder{}
	}
	pool, err := balancer.New(balancer.Config{Name: "test", Builder: b, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { pool.Close() })
	for _, a := range addrs {
		require.NoError(t, pool.Add(balancer.Backend{Addr: a}))
	}
	return pool
}

// startProxy serves a proxy for cfg on a loopback listener and shuts it
// down when the test ends.
func startProxy(t testing.TB, cfg Config) (*Server, string) {
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
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		assert.NoError(t, p.Shutdown(ctx))
		assert.NoError(t, <-done, "Serve returns nil once shut down")
	})
	return p, ln.Addr().String()
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(wait))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t testing.TB) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

func TestNewValidation(t *testing.T) {
	pool := newPool(t, nil, netip.MustParseAddrPort("127.0.0.1:1"))
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no pool", Config{}},
		{"dial timeout", Config{Pool: pool, DialTimeout: -1}},
		{"attempts", Config{Pool: pool, DialAttempts: -1}},
		{"limit", Config{Pool: pool, MaxConnsPerBackend: -1}},
		{"header timeout", Config{Pool: pool, HeaderTimeout: -1}},
		{"proxy protocol", Config{Pool: pool, ProxyProtocol: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "tcpproxy: "), err.Error())
			p, err := New(Config{Pool: pool})
			require.NoError(t, err)
			assert.Error(t, p.Update(tt.cfg), "Update validates like New")
			assert.Equal(t, Config{Pool: pool}, p.Config(), "a refused Update changes nothing")
		})
	}
}

func TestEcho(t *testing.T) {
	b := startBackend(t, echo)
	p, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr)})
	c := dial(t, addr)
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
	assert.Equal(t, 1, p.BackendConns(b.addr))
	c.Close()
	require.Eventually(t, func() bool { return ep.InFlight() == 0 }, wait, 5*time.Millisecond, "Done on close")
	assert.EqualValues(t, 1, ep.Requests())
	assert.Zero(t, ep.Failures())
	assert.Zero(t, p.BackendConns(b.addr))
}

// TestHalfClose: the client finishes sending (CloseWrite); the backend
// sees EOF and only then answers; the answer still reaches the client.
func TestHalfClose(t *testing.T) {
	b := startBackend(t, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c) // until the client's FIN
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes", n)
		c.(*net.TCPConn).CloseWrite()
	})
	for _, idle := range []time.Duration{-1, time.Minute} {
		t.Run(fmt.Sprint("idle=", idle), func(t *testing.T) {
			_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), IdleTimeout: idle})
			c := dial(t, addr)
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

// TestBackendHalfClose: the backend sends and closes its side first;
// the client can still send and the backend still receives.
func TestBackendHalfClose(t *testing.T) {
	got := make(chan string, 1)
	b := startBackend(t, func(c net.Conn) {
		io.WriteString(c, "banner")
		c.(*net.TCPConn).CloseWrite()
		data, _ := io.ReadAll(c)
		got <- string(data)
	})
	_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr)})
	c := dial(t, addr)
	banner, err := io.ReadAll(c) // EOF from the backend's half-close
	require.NoError(t, err)
	assert.Equal(t, "banner", string(banner))
	_, err = io.WriteString(c, "late data")
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	select {
	case s := <-got:
		assert.Equal(t, "late data", s)
	case <-time.After(wait):
		t.Fatal("backend never got the client's data")
	}
}

// observer records the outcomes a pool reports through Endpoint.Done.
type observer struct {
	mu       sync.Mutex
	failed   map[netip.AddrPort]int
	ok       map[netip.AddrPort]int
	errs     []error
	observed atomic.Int64
}

func (o *observer) ObserveDone(ep *balancer.Endpoint, err error, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failed == nil {
		o.failed, o.ok = map[netip.AddrPort]int{}, map[netip.AddrPort]int{}
	}
	if err != nil {
		o.failed[ep.Addr()]++
		o.errs = append(o.errs, err)
	} else {
		o.ok[ep.Addr()]++
	}
	o.observed.Add(1)
}

// TestDialFailureRetry: dials to a dead backend are retried on live ones,
// and reach passive health only through Endpoint.Done, with their error.
func TestDialFailureRetry(t *testing.T) {
	dead := deadAddr(t)
	b1, b2 := startBackend(t, named("b1")), startBackend(t, named("b2"))
	pool := newPool(t, nil, dead, b1.addr, b2.addr)
	obs := &observer{}
	pool.SetObserver(obs)
	_, addr := startProxy(t, Config{Pool: pool})
	const clients = 60
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr, wait)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(wait))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || (line != "b1\n" && line != "b2\n") {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failed.Load(), "no client connection failed")
	assert.EqualValues(t, clients, b1.accepted.Load()+b2.accepted.Load())
	// The last connections may still be closing inside the proxy.
	require.Eventually(t, func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.ok[b1.addr]+obs.ok[b2.addr] == clients
	}, wait, 5*time.Millisecond)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	assert.Positive(t, obs.failed[dead], "dial failures reach the observer")
	assert.Zero(t, obs.failed[b1.addr]+obs.failed[b2.addr])
	assert.EqualValues(t, obs.failed[dead], pool.Endpoint(dead).Failures())
	for _, err := range obs.errs {
		assert.ErrorIs(t, err, syscall.ECONNREFUSED)
		assert.Contains(t, err.Error(), "tcpproxy: dial "+dead.String())
	}
}

func TestAllDialsFail(t *testing.T) {
	pool := newPool(t, nil, deadAddr(t), deadAddr(t), deadAddr(t), deadAddr(t))
	obs := &observer{}
	pool.SetObserver(obs)
	_, addr := startProxy(t, Config{Pool: pool, DialAttempts: 2})
	c := dial(t, addr)
	n, err := c.Read(make([]byte, 1))
	assert.Zero(t, n)
	assert.Error(t, err, "the client connection is closed")
	assert.EqualValues(t, 2, obs.observed.Load(), "bounded tries")
}

func TestNoReadyBackend(t *testing.T) {
	b := startBackend(t, echo)
	p, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr)})
	p.Pool().SetHealthy(b.addr, false)
	c := dial(t, addr)
	_, err := c.Read(make([]byte, 1))
	assert.Error(t, err)
	assert.Zero(t, b.accepted.Load())
}

// hold names itself and holds the connection until the client's end of
// it closes.
func hold(name string) func(net.Conn) {
	return func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(io.Discard, c)
	}
}

// readLine reads one line from c.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	return line
}

func TestConnectionLimit(t *testing.T) {
	b1, b2 := startBackend(t, hold("b1")), startBackend(t, hold("b2"))
	p, addr := startProxy(t, Config{Pool: newPool(t, nil, b1.addr, b2.addr), MaxConnsPerBackend: 2})
	seen := map[string]int{}
	var open []net.Conn
	for range 4 {
		c := dial(t, addr)
		open = append(open, c)
		seen[readLine(t, c)]++
	}
	assert.Equal(t, map[string]int{"b1\n": 2, "b2\n": 2}, seen, "a full backend is skipped for another")
	assert.Equal(t, 2, p.BackendConns(b1.addr))

	// Both full: the fifth client is turned away without reaching them.
	c := dial(t, addr)
	_, err := c.Read(make([]byte, 1))
	assert.Error(t, err)
	assert.EqualValues(t, 4, b1.accepted.Load()+b2.accepted.Load())

	// Slots free up when connections end.
	open[0].Close()
	require.Eventually(t, func() bool { return p.BackendConns(b1.addr)+p.BackendConns(b2.addr) == 3 }, wait, 5*time.Millisecond)
	for _, c := range open[1:] {
		c.Close()
	}
	require.Eventually(t, func() bool { return p.BackendConns(b1.addr)+p.BackendConns(b2.addr) == 0 }, wait, 5*time.Millisecond)
}

// headerBackend reads a PROXY header (if the first byte starts one),
// sends what it read on got, then echoes the payload after it.
func headerBackend(t *testing.T, got chan<- proxyproto.Header) *backend {
	return startBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		var h proxyproto.Header
		if first, err := br.Peek(1); err == nil && (first[0] == 'P' || first[0] == '\r') {
			if h, err = proxyproto.Read(br); err != nil {
				io.WriteString(c, err.Error())
				return
			}
		}
		got <- h
		io.Copy(c, br) // the payload follows the header
	})
}

// ping writes "ping" on c and reads it back.
func ping(t *testing.T, c net.Conn) {
	t.Helper()
	_, err := io.WriteString(c, "ping")
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))
}

func TestProxyProtocol(t *testing.T) {
	for _, v := range []proxyproto.Version{proxyproto.V1, proxyproto.V2} {
		t.Run(v.String(), func(t *testing.T) {
			got := make(chan proxyproto.Header, 1)
			b := headerBackend(t, got)
			_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), ProxyProtocol: v})
			c := dial(t, addr)
			ping(t, c)
			h := <-got
			assert.Equal(t, v, h.Version)
			assert.Equal(t, proxyproto.TCP, h.Transport)
			assert.Equal(t, c.LocalAddr().String(), h.Source.String(), "the client's address")
			assert.Equal(t, addr, h.Destination.String(), "the address the client connected to")
		})
	}
}

// TestAcceptProxyProtocol: behind another proxy, the client's PROXY header
// names the client; the header sent on carries that address, bytes sent
// right after the header are not lost, and a LOCAL header keeps the real
// addresses.
func TestAcceptProxyProtocol(t *testing.T) {
	real := proxyproto.Header{Transport: proxyproto.TCP,
		Source:      netip.MustParseAddrPort("198.18.0.7:51234"),
		Destination: netip.MustParseAddrPort("198.18.0.1:443")}
	for _, in := range []proxyproto.Version{proxyproto.V1, proxyproto.V2} {
		t.Run(in.String(), func(t *testing.T) {
			got := make(chan proxyproto.Header, 1)
			b := headerBackend(t, got)
			_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), AcceptProxyProtocol: true, ProxyProtocol: proxyproto.V2})
			c := dial(t, addr)
			h := real
			h.Version = in
			// Header and payload in one write: the proxy reads past the
			// header and must pass those bytes on.
			_, err := c.Write(append(h.Append(nil), "ping"...))
			require.NoError(t, err)
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			require.NoError(t, err)
			assert.Equal(t, "ping", string(buf))
			sent := <-got
			assert.Equal(t, real.Source, sent.Source)
			assert.Equal(t, real.Destination, sent.Destination)
		})
	}
	t.Run("local", func(t *testing.T) {
		got := make(chan proxyproto.Header, 1)
		b := headerBackend(t, got)
		_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), AcceptProxyProtocol: true, ProxyProtocol: proxyproto.V1})
		c := dial(t, addr)
		_, err := c.Write(proxyproto.Header{Version: proxyproto.V2, Local: true}.Append(nil))
		require.NoError(t, err)
		ping(t, c)
		assert.Equal(t, c.LocalAddr().String(), (<-got).Source.String())
	})
	t.Run("without header", func(t *testing.T) {
		got := make(chan proxyproto.Header, 1)
		b := headerBackend(t, got)
		_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), AcceptProxyProtocol: true})
		c := dial(t, addr)
		_, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
		require.NoError(t, err)
		_, err = c.Read(make([]byte, 1))
		assert.Error(t, err, "closed")
		assert.Zero(t, b.accepted.Load(), "nothing reached a backend")
	})
	t.Run("late", func(t *testing.T) {
		b := startBackend(t, echo)
		_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), AcceptProxyProtocol: true, HeaderTimeout: 50 * time.Millisecond})
		c := dial(t, addr)
		_, err := io.WriteString(c, "PROXY TCP4 198.18.0.7") // and nothing more
		require.NoError(t, err)
		_, err = c.Read(make([]byte, 1))
		assert.ErrorIs(t, err, io.EOF, "closed after HeaderTimeout")
		assert.Zero(t, b.accepted.Load())
	})
}

// dialFrom connects to addr from the loopback address src and returns
// the first line the backend sends.
func dialFrom(t *testing.T, addr, src string) string {
	t.Helper()
	d := net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	return readLine(t, c)
}

// TestKey: with a Maglev pool, a client key keeps each client (or each
// client /24) on one backend across connections; a flow key and no key
// spread one client's connections.
func TestKey(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range 4 {
		addrs = append(addrs, startBackend(t, named(fmt.Sprint("b", i))).addr)
	}
	tests := []struct {
		key    string
		sticky bool // one client's connections go to one backend
		subnet bool // and so do those of its /24
	}{
		{"", false, false},
		{"client", true, false},
		{"client/24", true, true},
		{"flow", false, false},
	}
	for _, tt := range tests {
		t.Run("key="+tt.key, func(t *testing.T) {
			_, addr := startProxy(t, Config{Pool: newPool(t, maglev.Builder{}, addrs...), Key: balancer.MustParseKey(tt.key)})
			spread := map[string]bool{}
			for i := 1; i <= 12; i++ {
				src := fmt.Sprintf("127.0.%d.%d", i, i)
				seen := map[string]bool{}
				for range 8 {
					seen[dialFrom(t, addr, src)] = true
				}
				if tt.sticky {
					assert.Len(t, seen, 1, "client %s keeps its backend", src)
				} else {
					assert.Greater(t, len(seen), 1, "client %s is spread", src)
				}
				if tt.subnet {
					for j := 2; j < 6; j++ {
						assert.True(t, seen[dialFrom(t, addr, fmt.Sprintf("127.0.%d.%d", i, j*10))], "same /24, same backend")
					}
				}
				for k := range seen {
					spread[k] = true
				}
			}
			assert.Greater(t, len(spread), 1, "clients are spread over the backends")
		})
	}
}

// TestAcceptProxyProtocolKey: behind another proxy, every connection
// comes from that proxy's address; the key hashes the client's address
// from the PROXY header instead, so clients stay on their backends and are
// spread over all of them.
func TestAcceptProxyProtocolKey(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range 4 {
		addrs = append(addrs, startBackend(t, named(fmt.Sprint("b", i))).addr)
	}
	_, addr := startProxy(t, Config{Pool: newPool(t, maglev.Builder{}, addrs...), Key: balancer.MustParseKey("client"), AcceptProxyProtocol: true})
	from := func(client netip.AddrPort) string {
		c := dial(t, addr)
		defer c.Close()
		h := proxyproto.Header{Version: proxyproto.V2, Transport: proxyproto.TCP, Source: client, Destination: netip.MustParseAddrPort("198.18.0.1:443")}
		_, err := c.Write(h.Append(nil))
		require.NoError(t, err)
		return readLine(t, c)
	}
	spread := map[string]bool{}
	for i := 1; i <= 12; i++ {
		first := from(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 7}), 40000))
		for port := range uint16(3) {
			assert.Equal(t, first, from(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 7}), 50000+port)), "client %d keeps its backend", i)
		}
		spread[first] = true
	}
	assert.Greater(t, len(spread), 1, "the key is the header's client, not the proxy in front")
}

func TestIdleTimeout(t *testing.T) {
	b := startBackend(t, echo)
	_, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr), IdleTimeout: 100 * time.Millisecond})
	c := dial(t, addr)
	ping(t, c)
	// Now silent on both sides: the proxy closes the connection.
	_, err := c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF)
}

// TestFollowedPool: a checker that follows the pool takes a killed
// backend out, with no call to the proxy, and clients keep connecting to
// the live one.
func TestFollowedPool(t *testing.T) {
	b1, b2 := startBackend(t, named("b1")), startBackend(t, named("b2"))
	chk, err := health.New(health.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer chk.Close()
	pool := newPool(t, nil, b1.addr, b2.addr)
	require.NoError(t, chk.Follow(pool, health.Template{Probe: health.TCP{}, Interval: 50 * time.Millisecond, Fall: 1, Rise: 1}))
	p, addr := startProxy(t, Config{Pool: pool})
	require.Eventually(t, func() bool { return len(p.Pool().Snapshot().Ready) == 2 }, wait, 5*time.Millisecond)

	b1.close()
	require.Eventually(t, func() bool { return len(p.Pool().Snapshot().Ready) == 1 }, wait, 5*time.Millisecond)
	for range 10 {
		c := dial(t, addr)
		assert.Equal(t, "b2\n", readLine(t, c))
		c.Close()
	}
}

// TestMembershipChange: removing a member from the pool leaves its
// established connections alone, and new connections go to the new set,
// including a member added while serving; no call to the proxy.
func TestMembershipChange(t *testing.T) {
	b1, b2, b3 := startBackend(t, named("b1")), startBackend(t, named("b2")), startBackend(t, named("b3"))
	pool := newPool(t, nil, b1.addr)
	_, addr := startProxy(t, Config{Pool: pool})
	old := dial(t, addr)
	br := bufio.NewReader(old)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "b1\n", line)

	require.NoError(t, pool.Set([]balancer.Backend{{Addr: b2.addr}, {Addr: b3.addr}}))
	seen := map[string]int{}
	for range 10 {
		c := dial(t, addr)
		seen[readLine(t, c)]++
		c.Close()
	}
	assert.Zero(t, seen["b1\n"], "no new connection to the removed member")
	assert.Positive(t, seen["b2\n"], "%v", seen)
	assert.Positive(t, seen["b3\n"], "new connections use the added member: %v", seen)

	_, err = io.WriteString(old, "still here")
	require.NoError(t, err)
	buf := make([]byte, len("still here"))
	_, err = io.ReadFull(br, buf)
	require.NoError(t, err, "the connection to the removed member survives")
	assert.Equal(t, "still here", string(buf))
	assert.EqualValues(t, 1, b1.accepted.Load())
}

// TestUpdate: Update changes what new connections get (PROXY header on,
// key, limits) while an established connection keeps working under the
// configuration it started with.
func TestUpdate(t *testing.T) {
	got := make(chan proxyproto.Header, 4)
	b := headerBackend(t, got)
	pool := newPool(t, nil, b.addr)
	p, addr := startProxy(t, Config{Pool: pool, IdleTimeout: -1})
	before := dial(t, addr)
	ping(t, before)
	assert.False(t, (<-got).Source.IsValid(), "no header before the update")

	cfg := p.Config()
	cfg.ProxyProtocol = proxyproto.V1
	cfg.Key = balancer.MustParseKey("client/24")
	cfg.MaxConnsPerBackend = 2
	require.NoError(t, p.Update(cfg))
	assert.Equal(t, cfg, p.Config())

	after := dial(t, addr)
	ping(t, after)
	h := <-got
	assert.Equal(t, proxyproto.V1, h.Version, "new connections send the header")
	assert.Equal(t, after.LocalAddr().String(), h.Source.String())

	// The limit of 2 counts the connection from before the update.
	third := dial(t, addr)
	_, err := third.Read(make([]byte, 1))
	assert.Error(t, err, "turned away: at the new limit")

	ping(t, before) // unchanged: no header injected, still open
	cfg.MaxConnsPerBackend = 0
	require.NoError(t, p.Update(cfg))
	ping(t, dial(t, addr))
}

func TestWeights(t *testing.T) {
	b1, b2 := startBackend(t, named("b1")), startBackend(t, named("b2"))
	pool, err := balancer.New(balancer.Config{Builder: weighted.Builder{}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: b1.addr, Weight: 1}, {Addr: b2.addr, Weight: 3}}))
	_, addr := startProxy(t, Config{Pool: pool})
	counts := map[string]int{}
	for range 200 {
		c := dial(t, addr)
		counts[readLine(t, c)]++
		c.Close()
	}
	assert.InDelta(t, 50, counts["b1\n"], 20, "%v", counts)
	assert.InDelta(t, 150, counts["b2\n"], 20, "%v", counts)
}

func TestAddrPort(t *testing.T) {
	assert.Equal(t, "198.18.0.1:80", addrPort(&net.TCPAddr{IP: net.ParseIP("::ffff:198.18.0.1"), Port: 80}).String())
	assert.False(t, addrPort(nil).IsValid())
	assert.Equal(t, "[::1]:5", addrPort(&net.UDPAddr{IP: net.IPv6loopback, Port: 5}).String())
	assert.True(t, errors.Is(fmt.Errorf("x: %w", ErrNoBackend), ErrNoBackend))
}

// TestIdleOneWay: a connection on which only the backend talks (a
// server push, a download) is not idle; once it stops, it is. The copy
// loop runs over in-memory pipes in a synctest bubble, so the idle rounds
// run on the fake clock.
func TestIdleOneWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 500 * time.Millisecond
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
		go func() { errc <- pipe(proxyClient, proxyBackend, idle) }()

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

// TestUpdateConcurrent: Update while connections are being set up; each
// connection sees one whole configuration (under -race, no torn reads) and
// works: with or without a header, the payload arrives intact.
func TestUpdateConcurrent(t *testing.T) {
	got := make(chan proxyproto.Header, 100)
	b := headerBackend(t, got)
	p, addr := startProxy(t, Config{Pool: newPool(t, nil, b.addr)})
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				c, err := net.DialTimeout("tcp", addr, wait)
				if err != nil {
					failed.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(wait))
				buf := make([]byte, 4)
				if _, err := io.WriteString(c, "ping"); err != nil {
					failed.Add(1)
				} else if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
					failed.Add(1)
				}
				c.Close()
			}
		})
	}
	cfg := p.Config()
	for i := range 50 {
		cfg.ProxyProtocol = proxyproto.Version(i % 3)
		cfg.Key = balancer.Key{}
		if i%2 == 1 {
			cfg.Key = balancer.MustParseKey("flow")
		}
		require.NoError(t, p.Update(cfg))
	}
	wg.Wait()
	assert.Zero(t, failed.Load())
	for range 80 {
		h := <-got
		assert.Contains(t, []proxyproto.Version{0, proxyproto.V1, proxyproto.V2}, h.Version)
	}
}

// TestKeepAliveOffByDefault: keep-alive probes (four setsockopt calls per
// socket in Go's default) are off unless Config.KeepAlive asks for them.
func TestKeepAliveOffByDefault(t *testing.T) {
	pool := newPool(t, nil)
	st, err := newSettings(Config{Pool: pool}, nil)
	require.NoError(t, err)
	assert.Negative(t, st.dialer.KeepAlive, "no probes on backend sockets")
	assert.Negative(t, keepAlive(0))
	st, err = newSettings(Config{Pool: pool, KeepAlive: 30 * time.Second}, nil)
	require.NoError(t, err)
	assert.Equal(t, 30*time.Second, st.dialer.KeepAlive)
}
