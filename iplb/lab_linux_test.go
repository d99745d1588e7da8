package iplb

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/internal/netlab"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lab: a client subnet and a backend subnet on one bridge, the
// balancer on both, VIPs on the balancer's lo.
//
//	client 198.18.1.2 ──┐                 ┌── be1 198.18.2.11 (weight 1)
//	                    ├─ bal 198.18.1.1 ├── be2 198.18.2.12 (weight 1)
//	                    │      198.18.2.1 └── be3 198.18.2.13 (weight 2)
//	VIPs 198.19.0.10, fd00:198:19::10 (routed by the client to bal)
var (
	vip4 = netip.MustParseAddr("198.19.0.10")
	vip6 = netip.MustParseAddr("fd00:198:19::10")
)

type lab struct {
	client, bal *netlab.Host
	backends    []*testBackend
}

// testBackend is an HTTP and UDP server in its own namespace that answers
// with its name and the peer address it saw.
type testBackend struct {
	name   string
	host   *netlab.Host
	weight uint32
	http   []net.Listener
	udp    []net.PacketConn
}

func (tb *testBackend) addr(v6 bool, port uint16) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(tb.host.Addr6(), port)
	}
	return netip.AddrPortFrom(tb.host.Addr4(), port)
}

const backendPort = 8080

func newLab(t testing.TB) *lab {
	netlab.RequireRoot(t)
	nl, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	p := netip.MustParsePrefix
	client, err := nl.AddHost("client", p("198.18.1.2/24"), p("fd00:198:18:1::2/64"))
	require.NoError(t, err)
	bal, err := nl.AddHost("bal", p("198.18.1.1/24"), p("fd00:198:18:1::1/64"), p("198.18.2.1/24"), p("fd00:198:18:2::1/64"))
	require.NoError(t, err)
	require.NoError(t, bal.Sysctl("net.ipv4.ip_forward", "1"))
	require.NoError(t, bal.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	require.NoError(t, bal.AddAddr(p("198.19.0.10/32"), "lo"))
	require.NoError(t, bal.AddAddr(p("fd00:198:19::10/128"), "lo"))
	require.NoError(t, client.AddRoute(p("198.19.0.0/24"), netip.MustParseAddr("198.18.1.1")))
	require.NoError(t, client.AddRoute(p("fd00:198:19::/64"), netip.MustParseAddr("fd00:198:18:1::1")))
	l := &lab{client: client, bal: bal}
	for i, w := range []uint32{1, 1, 2} {
		name := fmt.Sprintf("be%d", i+1)
		h, err := nl.AddHost(name, p(fmt.Sprintf("198.18.2.%d/24", 11+i)), p(fmt.Sprintf("fd00:198:18:2::%d/64", 11+i)))
		require.NoError(t, err)
		// Replies go back through the balancer (gateway mode).
		require.NoError(t, h.AddRoute(p("0.0.0.0/0"), netip.MustParseAddr("198.18.2.1")))
		require.NoError(t, h.AddRoute(p("::/0"), netip.MustParseAddr("fd00:198:18:2::1")))
		tb := &testBackend{name: name, host: h, weight: w}
		tb.serve(t)
		l.backends = append(l.backends, tb)
	}
	return l
}

// serve starts the backend's servers on port 8080, IPv4 and IPv6, until
// the lab closes their sockets.
func (tb *testBackend) serve(t testing.TB) {
	var wg sync.WaitGroup
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, tb.name+" "+r.RemoteAddr)
	})}
	for _, a := range []netip.Addr{tb.host.Addr4(), tb.host.Addr6()} {
		ln, err := tb.host.Listen("tcp", netip.AddrPortFrom(a, backendPort).String())
		require.NoError(t, err)
		tb.http = append(tb.http, ln)
		wg.Go(func() { _ = srv.Serve(ln) })
		pc, err := tb.host.ListenPacket("udp", netip.AddrPortFrom(a, backendPort).String())
		require.NoError(t, err)
		tb.udp = append(tb.udp, pc)
		wg.Go(func() {
			buf := make([]byte, 1500)
			for {
				_, peer, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(tb.name+" "+peer.String()), peer)
			}
		})
	}
	t.Cleanup(func() {
		_ = srv.Close()
		for _, pc := range tb.udp {
			_ = pc.Close()
		}
		wg.Wait()
	})
}

// pool returns a pool of the lab's backends for one family.
func (l *lab) pool(t testing.TB, v6 bool) *balancer.Pool {
	var bs []balancer.Backend
	for _, tb := range l.backends {
		bs = append(bs, balancer.Backend{Addr: tb.addr(v6, backendPort), Weight: tb.weight})
	}
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{Size: 251}})
	require.NoError(t, p.Set(bs))
	return p
}

// flowKey hashes a flow's 5-tuple.
var flowKey = balancer.Key{Source: balancer.KeyFlow}

func (l *lab) backendByName(name string) *testBackend {
	for _, tb := range l.backends {
		if tb.name == name {
			return tb
		}
	}
	return nil
}

func (l *lab) newBalancer(t testing.TB) *Balancer {
	return serveBalancer(t, Config{NetNS: int(l.bal.NS())})
}

// serveBalancer returns a balancer serving on its own goroutine until
// the test ends.
func serveBalancer(t testing.TB, cfg Config) *Balancer {
	t.Helper()
	b, err := New(cfg)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- b.Serve(context.Background()) }()
	require.NoError(t, b.Sync(context.Background()))
	t.Cleanup(func() {
		assert.NoError(t, b.Close())
		assert.NoError(t, <-served)
	})
	return b
}

// httpClient dials from the client namespace, one connection per request
// unless keepAlive.
func (l *lab) httpClient(keepAlive bool) *http.Client {
	return &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{DialContext: l.client.DialContext, DisableKeepAlives: !keepAlive},
	}
}

// get fetches url and returns the backend name and the peer it saw.
func get(t testing.TB, c *http.Client, url string) (name, peer string) {
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	name, peer, _ = strings.Cut(string(body), " ")
	return name, peer
}

// udpAsk sends one datagram from a fresh socket (a fresh source port) to
// vip and returns the backend name, the peer it saw and the reply's source.
// It also returns the socket's port: a port reused while its conntrack
// entry lives is the same flow.
func (l *lab) udpAsk(t testing.TB, vip netip.AddrPort) (name, peer string, from netip.AddrPort, port int) {
	network := "udp4"
	if vip.Addr().Is6() {
		network = "udp6"
	}
	var pc net.PacketConn
	require.NoError(t, l.client.Do(func() (err error) {
		pc, err = net.ListenPacket(network, ":0")
		return err
	}))
	defer pc.Close()
	buf := make([]byte, 1500)
	// UDP may drop; retry a few times on the same socket.
	for range 5 {
		_, err := pc.WriteTo([]byte("who"), net.UDPAddrFromAddrPort(vip))
		require.NoError(t, err)
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(2*time.Second)))
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		name, peer, _ = strings.Cut(string(buf[:n]), " ")
		return name, peer, src.(*net.UDPAddr).AddrPort(), pc.LocalAddr().(*net.UDPAddr).Port
	}
	t.Fatalf("no UDP answer from %v", vip)
	return
}

func url(vip netip.AddrPort) string { return "http://" + vip.String() + "/" }

// checkShares asserts that counts follow the backends' weights 1:1:2
// loosely (hash distribution over random source ports) and that every
// backend got some.
func (l *lab) checkShares(t *testing.T, counts map[string]int, total int) {
	t.Helper()
	var wsum uint32
	for _, tb := range l.backends {
		wsum += tb.weight
	}
	for _, tb := range l.backends {
		want := float64(total) * float64(tb.weight) / float64(wsum)
		got := float64(counts[tb.name])
		assert.InDelta(t, want, got, want*0.5+5, "%s: %d of %d (weights 1:1:2): %v", tb.name, counts[tb.name], total, counts)
	}
}

// checkStats asserts that the kernel counters saw exactly the flows the
// backends saw.
func checkStats(t *testing.T, b *Balancer, svc string, l *lab, v6 bool, counts map[string]int) {
	t.Helper()
	stats, err := b.Stats()
	require.NoError(t, err)
	for _, st := range stats {
		if st.Name != svc {
			continue
		}
		total := 0
		for _, tb := range l.backends {
			for _, bs := range st.Backends {
				if bs.Addr == tb.addr(v6, backendPort) {
					assert.Equal(t, uint64(counts[tb.name]), bs.Flows, "kernel flow counter of %s", tb.name)
				}
			}
			total += counts[tb.name]
		}
		assert.Equal(t, uint64(total), st.Flows, "service flow counter")
		return
	}
	t.Fatalf("no stats for %s", svc)
}

func TestLab(t *testing.T) {
	l := newLab(t)
	b := l.newBalancer(t)
	ctx := context.Background()
	balAddr := map[bool]string{false: "198.18.2.1", true: "fd00:198:18:2::1"}
	clientAddr := map[bool]string{false: "198.18.1.2", true: "fd00:198:18:1::2"}

	for _, tc := range []struct {
		mode Mode
		v6   bool
		port uint16
	}{
		{Gateway, false, 80}, {FullNAT, false, 81}, {Gateway, true, 80}, {FullNAT, true, 81},
	} {
		fam := "ipv4"
		vip := netip.AddrPortFrom(vip4, tc.port)
		if tc.v6 {
			fam, vip = "ipv6", netip.AddrPortFrom(vip6, tc.port)
		}
		t.Run(fmt.Sprintf("%v/%s", tc.mode, fam), func(t *testing.T) {
			name := fmt.Sprintf("%v-%s", tc.mode, fam)
			wantPeer := clientAddr[tc.v6]
			if tc.mode == FullNAT {
				wantPeer = balAddr[tc.v6]
			}
			err := b.AddService(Service{Name: name + "-tcp", VIP: vip, Mode: tc.mode, Key: flowKey, Pool: l.pool(t, tc.v6)})
			require.NoError(t, err)
			err = b.AddService(Service{Name: name + "-udp", VIP: vip, Proto: UDP, Mode: tc.mode, Key: flowKey, Pool: l.pool(t, tc.v6)})
			require.NoError(t, err)

			const n = 200
			c := l.httpClient(false)
			counts := map[string]int{}
			for range n {
				be, peer := get(t, c, url(vip))
				counts[be]++
				host, _, err := net.SplitHostPort(peer)
				require.NoError(t, err)
				require.Equal(t, wantPeer, host, "the address the backend sees")
			}
			l.checkShares(t, counts, n)
			checkStats(t, b, name+"-tcp", l, tc.v6, counts)

			ucounts := map[string]int{}
			ports := map[int]bool{}
			for range n {
				be, peer, from, port := l.udpAsk(t, vip)
				if !ports[port] {
					ucounts[be]++
					ports[port] = true
				}
				require.Equal(t, vip, from, "UDP replies come from the VIP")
				host, _, err := net.SplitHostPort(peer)
				require.NoError(t, err)
				require.Equal(t, wantPeer, host)
			}
			l.checkShares(t, ucounts, len(ports))
			checkStats(t, b, name+"-udp", l, tc.v6, ucounts)
		})
	}

	t.Run("nft lists the table", func(t *testing.T) {
		nft, err := exec.LookPath("nft")
		if err != nil {
			t.Skip("iplb: nft not installed")
		}
		cmd := exec.Command(nft, "list", "table", "inet", "lbkit")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, l.bal.Start(cmd))
		require.NoError(t, cmd.Wait(), "operators must be able to read the ruleset: %s", out.String())
		for _, want := range []string{
			"ip daddr 198.19.0.10 tcp dport 80 counter name \"gateway-ipv4-tcp\" dnat ip to jhash ip saddr . tcp sport mod 1021",
			"ip6 daddr fd00:198:19::10 udp dport 81 counter name \"fullnat-ipv6-udp\" dnat ip6 to jhash ip6 saddr . udp sport mod 1021",
			"ct original ip daddr 198.19.0.10 ct protocol tcp ct original proto-dst 81 masquerade",
		} {
			assert.Contains(t, out.String(), want)
		}
	})

	t.Run("Lookup predicts the kernel's choice", func(t *testing.T) {
		// The services of the first subtests are still installed.
		for _, v6 := range []bool{false, true} {
			svc, vip := "gateway-ipv4-tcp", netip.AddrPortFrom(vip4, 80)
			if v6 {
				svc, vip = "gateway-ipv6-tcp", netip.AddrPortFrom(vip6, 80)
			}
			for range 50 {
				c, err := l.client.DialContext(ctx, "tcp", vip.String())
				require.NoError(t, err)
				local := c.LocalAddr().(*net.TCPAddr).AddrPort()
				_, err = io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
				require.NoError(t, err)
				resp, err := io.ReadAll(c)
				c.Close()
				require.NoError(t, err)
				_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
				name, _, _ := strings.Cut(body, " ")
				want, ok := b.Lookup(svc, local)
				require.True(t, ok)
				var got netip.AddrPort
				for _, tb := range l.backends {
					if tb.name == name {
						got = tb.addr(v6, backendPort)
					}
				}
				require.Equal(t, want, got, "flow from %v", local)
			}
		}
		_, ok := b.Lookup("nope", netip.MustParseAddrPort("198.18.1.2:1"))
		assert.False(t, ok)
		_, ok = b.Lookup("rr", netip.MustParseAddrPort("198.18.1.2:1"))
		assert.False(t, ok, "round robin: no hash to predict")
		_, ok = b.Lookup("gateway-ipv4-tcp", netip.MustParseAddrPort("[fd00::1]:1"))
		assert.False(t, ok, "wrong family")
	})

	t.Run("a client key hashes the source address under its prefix", func(t *testing.T) {
		// Eight client addresses in one /24.
		var srcs []netip.Addr
		for i := range 8 {
			a := netip.AddrFrom4([4]byte{198, 18, 1, byte(30 + i)})
			require.NoError(t, l.client.AddAddr(netip.PrefixFrom(a, 24), "eth0"))
			srcs = append(srcs, a)
		}
		ask := func(src netip.Addr, vip netip.AddrPort) (netip.AddrPort, string) {
			t.Helper()
			var c net.Conn
			require.NoError(t, l.client.Do(func() (err error) {
				d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
				c, err = d.DialContext(ctx, "tcp", vip.String())
				return err
			}))
			defer c.Close()
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			_, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
			require.NoError(t, err)
			resp, err := io.ReadAll(c)
			require.NoError(t, err)
			_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
			name, _, _ := strings.Cut(body, " ")
			return local, name
		}
		for _, tc := range []struct {
			key  string
			port uint16
		}{{"client", 96}, {"client/24", 97}} {
			vip := netip.AddrPortFrom(vip4, tc.port)
			require.NoError(t, b.AddService(Service{Name: "by-" + strings.ReplaceAll(tc.key, "/", "-"), VIP: vip,
				Key: balancer.MustParseKey(tc.key), Pool: l.pool(t, false)}))
			seen := map[string]bool{}
			for _, src := range srcs {
				for range 2 {
					local, name := ask(src, vip)
					want, ok := b.Lookup("by-"+strings.ReplaceAll(tc.key, "/", "-"), local)
					require.True(t, ok)
					assert.Equal(t, want.Addr(), l.backendByName(name).addr(false, backendPort).Addr(), "%s: flow from %v", tc.key, local)
					seen[name] = true
				}
			}
			if tc.key == "client/24" {
				assert.Len(t, seen, 1, "one /24, one backend")
			} else {
				assert.Greater(t, len(seen), 1, "eight addresses spread over the backends")
			}
		}
	})

	t.Run("roundrobin follows the slots exactly", func(t *testing.T) {
		vip := netip.AddrPortFrom(vip4, 82)
		err := b.AddService(Service{Name: "rr", VIP: vip, TableSize: 251, Pool: l.pool(t, false)})
		require.NoError(t, err)
		c := l.httpClient(false)
		counts := map[string]int{}
		for range 251 {
			be, _ := get(t, c, url(vip))
			counts[be]++
		}
		// numgen walks every slot once in 251 new flows.
		st, err := b.Stats()
		require.NoError(t, err)
		for _, bs := range st[slicesIndex(st, "rr")].Backends {
			for _, tb := range l.backends {
				if tb.addr(false, backendPort) == bs.Addr {
					assert.Equal(t, bs.Slots, counts[tb.name], "%s", tb.name)
				}
			}
		}
		require.NoError(t, b.RemoveService("rr"))
	})

	t.Run("unhealthy and drain", func(t *testing.T) {
		vip := netip.AddrPortFrom(vip4, 90)
		pool := poolOf(t,
			balancer.Backend{Addr: l.backends[0].addr(false, backendPort)},
			balancer.Backend{Addr: l.backends[1].addr(false, backendPort)},
			balancer.Backend{Addr: l.backends[2].addr(false, backendPort)},
		)
		err := b.AddService(Service{Name: "health", VIP: vip, Pool: pool})
		require.NoError(t, err)
		// One open keep-alive connection per backend.
		open := map[string]*http.Client{}
		for range 100 {
			c := l.httpClient(true)
			be, _ := get(t, c, url(vip))
			if open[be] == nil {
				open[be] = c
			} else {
				c.CloseIdleConnections()
			}
			if len(open) == 3 {
				break
			}
		}
		require.Len(t, open, 3, "one connection to each backend")

		sick, drained := l.backends[0], l.backends[1]
		require.True(t, pool.SetHealthy(sick.addr(false, backendPort), false))
		require.True(t, pool.SetDraining(drained.addr(false, backendPort), true))
		require.NoError(t, b.Sync(ctx), "one apply")

		fresh := l.httpClient(false)
		for range 60 {
			be, _ := get(t, fresh, url(vip))
			require.Equal(t, l.backends[2].name, be, "new flows go to the only ready backend")
		}
		// Open connections continue: to the healthy one, and to the
		// drained one until it finishes.
		for _, tb := range l.backends[1:] {
			be, _ := get(t, open[tb.name], url(vip))
			assert.Equal(t, tb.name, be, "an open connection stays on its backend")
			open[tb.name].CloseIdleConnections()
		}
		open[sick.name].CloseIdleConnections()

		// The watcher applies a recovery without Sync.
		require.True(t, pool.SetHealthy(sick.addr(false, backendPort), true))
		want := pool.Snapshot().Version
		require.Eventually(t, func() bool {
			st, err := b.Stats()
			return err == nil && st[slicesIndex(st, "health")].Version == want
		}, 10*time.Second, 5*time.Millisecond)
		seen := map[string]bool{}
		for range 100 {
			be, _ := get(t, fresh, url(vip))
			seen[be] = true
		}
		assert.True(t, seen[sick.name], "a recovered backend gets new flows")
		assert.False(t, seen[drained.name], "a draining backend gets none")
		require.NoError(t, b.RemoveService("health"))
	})

	t.Run("runtime changes keep established flows", func(t *testing.T) {
		kept := netip.AddrPortFrom(vip4, 92)
		other := netip.AddrPortFrom(vip4, 93)
		require.NoError(t, b.AddService(Service{Name: "kept", VIP: kept, Pool: l.pool(t, false)}))
		require.NoError(t, b.AddService(Service{Name: "changed", VIP: other, Pool: l.pool(t, false)}))
		// One keep-alive connection to each service.
		keptC, changedC := l.httpClient(true), l.httpClient(true)
		defer keptC.CloseIdleConnections()
		defer changedC.CloseIdleConnections()
		keptBE, keptPeer := get(t, keptC, url(kept))
		changedBE, changedPeer := get(t, changedC, url(other))
		same := func(c *http.Client, vip netip.AddrPort, be, peer string, why string) {
			t.Helper()
			for range 3 {
				gotBE, gotPeer := get(t, c, url(vip))
				require.Equal(t, be, gotBE, why)
				require.Equal(t, peer, gotPeer, "%s: the same connection", why)
			}
		}

		// Add a service, then remove it: each is one batch that
		// rewrites the hooks; the kept service's flows carry on.
		extra := netip.AddrPortFrom(vip4, 94)
		require.NoError(t, b.AddService(Service{Name: "extra", VIP: extra, Mode: FullNAT, Pool: l.pool(t, false)}))
		get(t, l.httpClient(false), url(extra))
		same(keptC, kept, keptBE, keptPeer, "after adding a service")
		require.NoError(t, b.RemoveService("extra"))
		same(keptC, kept, keptBE, keptPeer, "after removing a service")

		// Change the other service: its only backend is now one it
		// did not pick, in FullNAT mode. Its established flow stays in
		// conntrack, on its backend; new flows follow the new config.
		var target *testBackend
		for _, tb := range l.backends {
			if tb.name != changedBE {
				target = tb
				break
			}
		}
		require.NoError(t, b.UpdateService(Service{Name: "changed", VIP: other, Mode: FullNAT,
			Pool: poolOf(t, balancer.Backend{Addr: target.addr(false, backendPort)})}))
		same(changedC, other, changedBE, changedPeer, "a changed service's established flow")
		same(keptC, kept, keptBE, keptPeer, "after changing another service")
		fresh := l.httpClient(false)
		for range 10 {
			be, peer := get(t, fresh, url(other))
			require.Equal(t, target.name, be, "new flows follow the new pool")
			host, _, err := net.SplitHostPort(peer)
			require.NoError(t, err)
			require.Equal(t, "198.18.2.1", host, "new flows are FullNAT")
		}

		// The whole set at once: "changed" moves to IPv6 (new maps of
		// the same names), "kept" stays, "rr2" joins, in one batch.
		v6 := netip.AddrPortFrom(vip6, 93)
		require.NoError(t, b.SetServices(append(slices.DeleteFunc(b.Services(), func(s Service) bool {
			return s.Name == "changed"
		}), Service{Name: "changed", VIP: v6, Pool: l.pool(t, true)},
			Service{Name: "rr2", VIP: netip.AddrPortFrom(vip4, 95), Pool: l.pool(t, false)})))
		same(keptC, kept, keptBE, keptPeer, "after SetServices")
		get(t, l.httpClient(false), url(v6))
		get(t, l.httpClient(false), url(netip.AddrPortFrom(vip4, 95)))
		require.NoError(t, b.RemoveService("changed"))
		require.NoError(t, b.RemoveService("rr2"))
		require.NoError(t, b.RemoveService("kept"))
	})

	t.Run("killed backend leaves through the health checker", func(t *testing.T) {
		// The whole path: a TCP probe from the balancer's namespace fails,
		// the checker, following the pool, marks the member down, and
		// the balancer's goroutine applies the snapshot, without Sync.
		chk, err := health.New(health.Config{Logger: quietLogger()})
		require.NoError(t, err)
		defer chk.Close()
		probe := health.ProberFunc(func(ctx context.Context, addr netip.AddrPort) (health.Report, error) {
			c, err := l.bal.DialContext(ctx, "tcp", addr.String())
			if err != nil {
				return health.Report{}, err
			}
			return health.Report{}, c.Close()
		})
		vip := netip.AddrPortFrom(vip4, 91)
		pool := l.pool(t, false)
		require.NoError(t, chk.Follow(pool, health.Template{
			Probe: probe, Initial: health.Healthy, Interval: 20 * time.Millisecond, Fall: 1, Timeout: 2 * time.Second,
		}))
		defer chk.Unfollow(pool)
		err = b.AddService(Service{Name: "checked", VIP: vip, Pool: pool})
		require.NoError(t, err)
		// An open connection to a backend that stays up.
		survivor := l.httpClient(true)
		var alive string
		for alive == "" || alive == l.backends[0].name {
			survivor.CloseIdleConnections()
			alive, _ = get(t, survivor, url(vip))
		}

		victim := l.backends[0]
		require.NoError(t, victim.http[0].Close(), "kill backend %s", victim.name)
		require.Eventually(t, func() bool {
			st, err := b.Stats()
			if err != nil {
				return false
			}
			for _, bs := range st[slicesIndex(st, "checked")].Backends {
				if bs.Addr == victim.addr(false, backendPort) {
					return bs.Slots == 0
				}
			}
			return false
		}, 15*time.Second, 10*time.Millisecond, "the checker's verdict reaches the kernel map")
		fresh := l.httpClient(false)
		for range 60 {
			be, _ := get(t, fresh, url(vip))
			require.NotEqual(t, victim.name, be)
		}
		be, _ := get(t, survivor, url(vip))
		assert.Equal(t, alive, be, "an open connection to a healthy backend carries on")
		survivor.CloseIdleConnections()
		chk.Unfollow(pool)
		require.NoError(t, b.RemoveService("checked"))
	})

	t.Run("close removes the table and restart replaces a stale one", func(t *testing.T) {
		c, err := nftables.New(nftables.WithNetNSFd(int(l.bal.NS())))
		require.NoError(t, err)
		tables := func() []string {
			ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
			require.NoError(t, err)
			var names []string
			for _, tb := range ts {
				names = append(names, tb.Name)
			}
			return names
		}
		// A stale table from a "crashed" run, with a chain lbkit never makes.
		stale := &nftables.Table{Name: "stale", Family: nftables.TableFamilyINet}
		c.AddTable(stale)
		c.AddChain(&nftables.Chain{Name: "junk", Table: stale})
		require.NoError(t, c.Flush())
		b2, err := New(Config{NetNS: int(l.bal.NS()), Table: "stale"})
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- b2.Serve(context.Background()) }()
		require.NoError(t, b2.Sync(context.Background()))
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		require.NoError(t, err)
		for _, ch := range chains {
			assert.NotEqual(t, "junk", ch.Name, "the stale table was replaced")
		}
		assert.ElementsMatch(t, []string{"lbkit", "stale"}, tables())
		require.NoError(t, b2.Close())
		require.NoError(t, <-served)
		assert.Equal(t, []string{"lbkit"}, tables())
	})
}

func slicesIndex(st []ServiceStats, name string) int {
	for i, s := range st {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// rawConn is a keep-alive HTTP/1.1 connection from the lab's client.
type rawConn struct {
	c net.Conn
	r *bufio.Reader
}

func (l *lab) rawDial(t testing.TB, vip netip.AddrPort) *rawConn {
	t.Helper()
	c, err := l.client.DialContext(context.Background(), "tcp", vip.String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawConn{c, bufio.NewReader(c)}
}

// get sends one request and returns the backend's name.
func (rc *rawConn) get() (string, error) {
	rc.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(rc.c, "GET / HTTP/1.1\r\nHost: vip\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	name, _, _ := strings.Cut(string(b), " ")
	return name, err
}

// TestLabShutdownDrains: Shutdown stops new flows but keeps translating
// open ones until they end, then removes the table; a Shutdown whose
// context ends first, and Close, remove it at once, which resets what is
// left. Removing a service keeps its open flows too: the table's NAT
// chains stay.
func TestLabShutdownDrains(t *testing.T) {
	l := newLab(t)
	vip, gone := netip.AddrPortFrom(vip4, 80), netip.AddrPortFrom(vip4, 81)
	start := func() (*Balancer, chan error) {
		b, err := New(Config{NetNS: int(l.bal.NS()), Logger: quietLogger(), Services: []Service{
			{Name: "web", VIP: vip, Pool: l.pool(t, false)},
			{Name: "gone", VIP: gone, Mode: FullNAT, Pool: l.pool(t, false)},
		}})
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- b.Serve(context.Background()) }()
		require.NoError(t, b.Sync(context.Background()))
		return b, served
	}
	b, served := start()
	open, removed := l.rawDial(t, vip), l.rawDial(t, gone)
	name, err := open.get()
	require.NoError(t, err)
	_, err = removed.get()
	require.NoError(t, err)
	require.NoError(t, b.RemoveService("gone"))
	_, err = removed.get()
	require.NoError(t, err, "a removed service's open flow keeps its translation")
	removed.c.Close()

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- b.Shutdown(ctx)
	}()
	require.Eventually(t, func() bool {
		c, err := l.client.DialContext(context.Background(), "tcp", vip.String())
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 10*time.Second, 20*time.Millisecond, "new connections reach the balancer itself, which refuses them")
	for range 3 {
		got, err := open.get()
		require.NoError(t, err, "an open flow carries on while draining")
		require.Equal(t, name, got)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a flow open", err)
	default:
	}
	open.c.Close()
	require.NoError(t, <-shut, "the last flow ended: the drain is over")
	require.NoError(t, <-served)

	// Without any service, the table still keeps conntrack on: an open
	// flow of a removed service keeps its translation (nftables turns
	// conntrack off some 20 ms after the last rule that needs it goes).
	b, served = start()
	open = l.rawDial(t, vip)
	name, err = open.get()
	require.NoError(t, err)
	require.NoError(t, b.SetServices(nil))
	assert.Never(t, func() bool {
		got, err := open.get()
		return err != nil || got != name
	}, 300*time.Millisecond, 30*time.Millisecond, "the open flow carries on with no service left")
	open.c.Close()
	require.NoError(t, b.Close())
	require.NoError(t, <-served)

	// A drain cut short by its context, and by Close.
	for _, stop := range []string{"deadline", "close"} {
		b, served := start()
		open := l.rawDial(t, vip)
		_, err := open.get()
		require.NoError(t, err)
		if stop == "deadline" {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			assert.ErrorIs(t, b.Shutdown(ctx), context.DeadlineExceeded)
			cancel()
		} else {
			shut := make(chan error, 1)
			go func() { shut <- b.Shutdown(context.Background()) }()
			require.Eventually(t, func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				return b.state == stopped
			}, 5*time.Second, 5*time.Millisecond)
			require.NoError(t, b.Close())
			require.NoError(t, <-shut)
		}
		require.NoError(t, <-served, stop)
		_, err = open.get()
		assert.Error(t, err, "%s: the table is gone, the flow left is reset", stop)
	}
}

// TestChangeConcurrent changes services and pools and reads stats from
// several goroutines at once against the kernel (run with -race), then
// checks that the kernel holds exactly the last set.
func TestChangeConcurrent(t *testing.T) {
	netlab.RequireRoot(t)
	nl, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	host, err := nl.AddHost("bal")
	require.NoError(t, err)
	b := serveBalancer(t, Config{NetNS: int(host.NS()), Logger: quietLogger()})
	pools := make([]*balancer.Pool, 3)
	for i := range pools {
		var bs []balancer.Backend
		for j := range 4 {
			bs = append(bs, balancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(10 + i), byte(1 + j)}), 8080)})
		}
		pools[i] = poolOf(t, bs...)
	}
	vip := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(vip4, port) }
	sets := [][]Service{
		{{Name: "a", VIP: vip(80), Pool: pools[0]}, {Name: "b", VIP: vip(81), Pool: pools[1], Key: flowKey}},
		{{Name: "a", VIP: vip(80), Pool: pools[2], Mode: FullNAT}, {Name: "c", VIP: vip(82), Pool: pools[1], Key: balancer.MustParseKey("client/24")}},
		{{Name: "b", VIP: vip(83), Pool: pools[0]}, {Name: "c", VIP: vip(82), Proto: UDP, Pool: pools[2]}},
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 30 {
			assert.NoError(t, b.SetServices(sets[i%len(sets)]))
		}
	})
	wg.Go(func() {
		for i := range 60 {
			p := pools[i%3]
			m := p.Snapshot().Members[i%4]
			p.SetHealthy(m.Addr(), i%2 == 0)
			p.SetWeight(m.Addr(), uint32(1+i%3))
		}
	})
	wg.Go(func() {
		for range 30 {
			_, err := b.Stats()
			assert.NoError(t, err)
			b.Lookup("a", netip.MustParseAddrPort("198.18.1.2:1000"))
			assert.NoError(t, b.Sync(context.Background()))
		}
	})
	wg.Wait()
	require.NoError(t, b.Sync(context.Background()))
	last := sets[(30-1)%len(sets)]
	st, err := b.Stats()
	require.NoError(t, err)
	require.Len(t, st, len(last))
	for i, s := range st {
		want := last[slices.IndexFunc(last, func(x Service) bool { return x.Name == s.Name })]
		assert.Equal(t, want.VIP, s.VIP, "service %d", i)
		assert.NoError(t, s.Err)
		assert.Equal(t, want.Pool.Snapshot().Version, s.Version, "%s reflects its pool's last snapshot", s.Name)
		assert.Len(t, s.Backends, 4)
	}
	// The kernel's ruleset names exactly these services.
	nft, err := exec.LookPath("nft")
	if err != nil {
		return
	}
	cmd := exec.Command(nft, "list", "table", "inet", "lbkit")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, host.Start(cmd))
	require.NoError(t, cmd.Wait(), out.String())
	assert.Equal(t, len(last), strings.Count(out.String(), "dnat ip to"), out.String())
	assert.Contains(t, out.String(), `udp dport 82 counter name "c"`)
	assert.Contains(t, out.String(), `tcp dport 83 counter name "b"`)
	assert.NotContains(t, out.String(), "dport 80 ")
}
