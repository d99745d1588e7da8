package l2lb

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/internal/netlab"
)

var (
	labVIP4 = netip.MustParseAddr("198.18.0.100")
	labVIP6 = netip.MustParseAddr("fd00:198:18::100")
)

// dsrLab is a client, a balancer and backends, each in its own namespace
// on one bridge (netlab's 198.18.0.0/24 and fd00:198:18::/64). The VIPs
// are on the balancer's eth0, so it answers ARP and neighbour
// solicitations for them; the backends carry them on lo with
// arp_ignore=1, arp_announce=2 and rp_filter=0.
type dsrLab struct {
	lab      *netlab.Lab
	client   *netlab.Host
	lb       *netlab.Host
	backends []*netlab.Host
	kill     []func() // kill[i] stops backend i's HTTP server
	pool4    *balancer.Pool
	pool6    *balancer.Pool
	poolUDP  *balancer.Pool
	bal      *Balancer
}

func (l *dsrLab) backendAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(l.backends[i].Addr4(), 80)
}

// setupBackend gives a backend host the VIPs and the DSR sysctls.
func setupBackend(t testing.TB, h *netlab.Host) {
	t.Helper()
	require.NoError(t, h.AddAddr(netip.PrefixFrom(labVIP4, 32), "lo"))
	require.NoError(t, h.AddAddr(netip.PrefixFrom(labVIP6, 128), "lo"))
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
		{"net.ipv4.conf.eth0.arp_ignore", "1"},
		{"net.ipv4.conf.eth0.arp_announce", "2"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.eth0.rp_filter", "0"},
	} {
		require.NoError(t, h.Sysctl(kv[0], kv[1]))
	}
}

// serveHTTP runs an HTTP server on :80 in h: /name answers the host's
// name, /blob?n=N sends N bytes. It returns a function that kills the
// server (also called at cleanup).
func serveHTTP(t testing.TB, h *netlab.Host) (kill func()) {
	t.Helper()
	ln, err := h.Listen("tcp", ":80")
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.HandleFunc("/name", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, h.Name()) })
	blob := make([]byte, 1<<20)
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		for n > 0 {
			k := min(n, len(blob))
			if _, err := w.Write(blob[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	kill = sync.OnceFunc(func() { srv.Close(); <-done })
	t.Cleanup(kill)
	return kill
}

// serveIn creates a balancer in h's namespace and serves it until the
// test ends.
func serveIn(t testing.TB, h *netlab.Host, cfg Config) *Balancer {
	t.Helper()
	var b *Balancer
	require.NoError(t, h.Do(func() (err error) {
		b, err = New(cfg)
		return err
	}))
	served := make(chan error, 1)
	go func() { served <- b.Serve(context.Background()) }()
	t.Cleanup(func() {
		assert.NoError(t, b.Close())
		assert.NoError(t, <-served)
	})
	return b
}

func newDSRLab(t testing.TB, nBackends int) *dsrLab {
	return newDSRLabMode(t, nBackends, AttachGeneric)
}

// newDSRLabMode is newDSRLab with the balancer attached in mode.
func newDSRLabMode(t testing.TB, nBackends int, mode AttachMode) *dsrLab {
	t.Helper()
	netlab.RequireRoot(t)
	lab, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	l := &dsrLab{lab: lab}
	l.client, err = lab.AddHost("client")
	require.NoError(t, err)
	l.lb, err = lab.AddHost("lb")
	require.NoError(t, err)
	require.NoError(t, l.lb.AddAddr(netip.PrefixFrom(labVIP4, 32), "eth0"))
	require.NoError(t, l.lb.AddAddr(netip.PrefixFrom(labVIP6, 128), "eth0"))
	var b4, b6, bu []balancer.Backend
	for i := range nBackends {
		h, err := lab.AddHost(fmt.Sprintf("be%d", i+1))
		require.NoError(t, err)
		setupBackend(t, h)
		l.kill = append(l.kill, serveHTTP(t, h))
		l.backends = append(l.backends, h)
		b4 = append(b4, balancer.Backend{Addr: netip.AddrPortFrom(h.Addr4(), 80)})
		b6 = append(b6, balancer.Backend{Addr: netip.AddrPortFrom(h.Addr6(), 80)})
		bu = append(bu, balancer.Backend{Addr: netip.AddrPortFrom(h.Addr4(), 9000)})
	}
	mk := func(bs []balancer.Backend) *balancer.Pool {
		p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
		require.NoError(t, p.Set(bs))
		t.Cleanup(func() { p.Close() })
		return p
	}
	l.pool4, l.pool6, l.poolUDP = mk(b4), mk(b6), mk(bu)
	l.bal = serveIn(t, l.lb, Config{
		Interface: "eth0",
		Mode:      mode,
		Services: []Service{
			{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: l.pool4},
			{VIP: netip.AddrPortFrom(labVIP6, 80), Pool: l.pool6},
			{VIP: netip.AddrPortFrom(labVIP4, 9000), Proto: UDP, Pool: l.poolUDP},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	syncStart := time.Now()
	require.NoError(t, l.bal.Sync(ctx), "backend MACs resolve through the neighbour table")
	t.Logf("backend MACs resolved in %v", time.Since(syncStart))
	return l
}

// conn is a keep-alive HTTP/1.1 connection from the client to a VIP.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

func (l *dsrLab) dial(t testing.TB, vip netip.Addr) *conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := l.client.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 80).String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &conn{c: c, r: bufio.NewReader(c)}
}

// get sends one request on the connection and returns the body.
func (c *conn) get(path string) (string, error) {
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.c, "GET %s HTTP/1.1\r\nHost: vip\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// name opens a new connection to vip and returns the backend that served
// it.
func (l *dsrLab) name(t testing.TB, vip netip.Addr) string {
	t.Helper()
	c := l.dial(t, vip)
	defer c.c.Close()
	n, err := c.get("/name")
	require.NoError(t, err)
	return n
}

func rxBytes(t testing.TB, h *netlab.Host) uint64 {
	t.Helper()
	link, err := h.Handle().LinkByName("eth0")
	require.NoError(t, err)
	return link.Attrs().Statistics.RxBytes
}

func TestLab(t *testing.T) {
	l := newDSRLab(t, 3)

	t.Run("backends are set up for DSR", func(t *testing.T) {
		for _, h := range l.backends {
			assert.NoError(t, CheckBackend(h.Do, labVIP4), h.Name())
			assert.NoError(t, CheckBackend(h.Do, labVIP6), h.Name())
		}
		// The client is not: the check says exactly what is wrong.
		require.NoError(t, l.client.Sysctl("net.ipv4.conf.all.rp_filter", "1"))
		err := CheckBackend(l.client.Do, labVIP4)
		var se *SetupError
		require.ErrorAs(t, err, &se)
		require.ErrorIs(t, err, ErrBackendSetup)
		msg := err.Error()
		assert.Contains(t, msg, "VIP 198.18.0.100 is not on lo")
		assert.Contains(t, msg, "eth0: arp_ignore is 0")
		assert.Contains(t, msg, "eth0: arp_announce is 0")
		assert.Contains(t, msg, "eth0: rp_filter is strict")
		assert.Len(t, se.Problems, 4, msg)
		require.NoError(t, l.client.Sysctl("net.ipv4.conf.all.rp_filter", "0"))
	})

	t.Run("TCP through the VIP reaches every backend", func(t *testing.T) {
		for _, vip := range []netip.Addr{labVIP4, labVIP6} {
			seen := map[string]int{}
			for range 60 {
				seen[l.name(t, vip)]++
			}
			assert.Len(t, seen, 3, "backends seen through %v: %v", vip, seen)
		}
	})

	t.Run("replies bypass the balancer", func(t *testing.T) {
		before, err := l.bal.Stats()
		require.NoError(t, err)
		lbRx0, clientRx0 := rxBytes(t, l.lb), rxBytes(t, l.client)
		const size, n = 2 << 20, 4
		for range n {
			c := l.dial(t, labVIP4)
			body, err := c.get("/blob?n=" + strconv.Itoa(size))
			require.NoError(t, err)
			require.Len(t, body, size)
			c.c.Close()
		}
		after, err := l.bal.Stats()
		require.NoError(t, err)
		lbRx, clientRx := rxBytes(t, l.lb)-lbRx0, rxBytes(t, l.client)-clientRx0
		xdpBytes := after.Services[0].Bytes - before.Services[0].Bytes
		t.Logf("client received %d bytes; balancer eth0 received %d bytes, its XDP program forwarded %d bytes in %d frames",
			clientRx, lbRx, xdpBytes, after.Services[0].Packets-before.Services[0].Packets)
		assert.Greater(t, clientRx, uint64(n*size))
		assert.Less(t, lbRx*20, clientRx, "the balancer sees only client-to-server frames")
		assert.Less(t, xdpBytes*20, clientRx)
		// Stats reads the per-service and global counters one after the
		// other; a late FIN or ACK of the closed connections can land
		// between the reads, so compare once the counters are quiet.
		assert.Eventually(t, func() bool {
			after, err := l.bal.Stats()
			require.NoError(t, err)
			return after.Services[0].Packets-before.Services[0].Packets == after.Forwarded-before.Forwarded-
				(after.Services[1].Packets-before.Services[1].Packets)-(after.Services[2].Packets-before.Services[2].Packets)
		}, 5*time.Second, 20*time.Millisecond, "every frame for the service was forwarded")
	})

	t.Run("a failed backend's new flows move within one apply; others undisturbed", func(t *testing.T) {
		// One keep-alive connection per backend.
		byName := map[string]*conn{}
		for range 200 {
			if len(byName) == 3 {
				break
			}
			c := l.dial(t, labVIP4)
			n, err := c.get("/name")
			require.NoError(t, err)
			if byName[n] == nil {
				byName[n] = c
			} else {
				c.c.Close()
			}
		}
		require.Len(t, byName, 3)

		// be3 drains: its connection keeps working, new ones avoid it.
		require.True(t, l.pool4.SetDraining(l.backendAddr(2), true))
		// be2 fails.
		require.True(t, l.pool4.SetHealthy(l.backendAddr(1), false))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, l.bal.Sync(ctx))

		st, err := l.bal.Stats()
		require.NoError(t, err)
		b2, _ := st.Services[0].Backend(l.backendAddr(1))
		b3, _ := st.Services[0].Backend(l.backendAddr(2))
		assert.False(t, b2.Up)
		assert.True(t, b3.Up)
		assert.False(t, b3.InRing)

		for range 40 {
			assert.Equal(t, "be1", l.name(t, labVIP4))
		}
		for range 5 {
			n, err := byName["be1"].get("/name")
			require.NoError(t, err)
			assert.Equal(t, "be1", n, "flows to healthy backends are undisturbed")
			n, err = byName["be3"].get("/name")
			require.NoError(t, err)
			assert.Equal(t, "be3", n, "a draining backend keeps its flows")
		}
		// be2's flow was picked again, to a backend that knows nothing
		// of it and resets it.
		_, err = byName["be2"].get("/name")
		assert.Error(t, err, "the failed backend's flow is dropped")

		require.True(t, l.pool4.SetHealthy(l.backendAddr(1), true))
		require.True(t, l.pool4.SetDraining(l.backendAddr(2), false))
		require.NoError(t, l.bal.Sync(ctx))
		seen := map[string]bool{}
		for range 60 {
			seen[l.name(t, labVIP4)] = true
		}
		assert.Len(t, seen, 3, "recovered backends take new flows again")
	})

	t.Run("UDP", func(t *testing.T) {
		var pcs []net.PacketConn
		for _, h := range l.backends {
			pc, err := h.ListenPacket("udp4", ":9000")
			require.NoError(t, err)
			pcs = append(pcs, pc)
		}
		got := make(chan string, 100)
		for i, pc := range pcs {
			go func() {
				buf := make([]byte, 64)
				for {
					n, _, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					got <- fmt.Sprintf("be%d:%s", i+1, buf[:n])
				}
			}()
		}
		var out net.PacketConn
		require.NoError(t, l.client.Do(func() (err error) { out, err = net.ListenPacket("udp4", ":0"); return err }))
		defer out.Close()
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(labVIP4, 9000))
		for i := range 30 {
			_, err := out.WriteTo([]byte(strconv.Itoa(i)), dst)
			require.NoError(t, err)
		}
		// One flow (one source port): every datagram to one backend.
		seen := map[string]bool{}
		for range 30 {
			select {
			case s := <-got:
				seen[strings.Split(s, ":")[0]] = true
			case <-time.After(10 * time.Second):
				t.Fatal("datagrams lost")
			}
		}
		assert.Len(t, seen, 1)
		for _, pc := range pcs {
			pc.Close()
		}
	})

	t.Run("concurrent pool changes, Stats and Sync", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				for k := range 10 {
					l.pool4.SetWeight(l.backendAddr(i), uint32(1+k%3))
					l.pool4.SetDraining(l.backendAddr(i), k%2 == 0)
				}
				l.pool4.SetDraining(l.backendAddr(i), false)
				l.pool4.SetWeight(l.backendAddr(i), 1)
			})
		}
		wg.Go(func() {
			for range 10 {
				_, err := l.bal.Stats()
				assert.NoError(t, err)
			}
		})
		for range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			assert.NoError(t, l.bal.Sync(ctx))
			cancel()
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, l.bal.Sync(ctx))
	})

	t.Run("the ring map holds the pool's Maglev table", func(t *testing.T) {
		// After the deltas written above, every slot names the backend
		// that a maglev.Builder picker over the same ready set picks.
		tbl := l.pool4.Snapshot().Picker.(*maglev.Picker).Table()
		l.bal.mu.Lock()
		idOf := map[uint64]uint32{}
		for addr, m := range l.bal.services[0].members {
			idOf[balancer.HashAddrPort(addr)] = m.id
		}
		l.bal.mu.Unlock()
		for slot, got := range readRing(t, l.bal.dp, 0) {
			require.Equal(t, idOf[tbl.SlotID(slot)], got, "slot %d", slot)
		}
	})

	t.Run("a backend's new MAC is picked up from the neighbour table", func(t *testing.T) {
		be1 := l.backends[0]
		fake := net.HardwareAddr{0x02, 0xfa, 0x4e, 0, 0, 1}
		n := &netlink.Neigh{LinkIndex: l.lb.Link().Index, IP: be1.Addr4().AsSlice(), HardwareAddr: fake,
			State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}
		require.NoError(t, l.lb.Handle().NeighSet(n))
		macOfBe1 := func() string {
			st, err := l.bal.Stats()
			require.NoError(t, err)
			b, _ := st.Services[0].Backend(l.backendAddr(0))
			return b.MAC.String()
		}
		require.Eventually(t, func() bool { return macOfBe1() == fake.String() }, 10*time.Second, 10*time.Millisecond)
		n.HardwareAddr = be1.Link().MAC
		require.NoError(t, l.lb.Handle().NeighSet(n))
		require.Eventually(t, func() bool { return macOfBe1() == be1.Link().MAC.String() }, 10*time.Second, 10*time.Millisecond)
		seen := map[string]bool{}
		for range 30 {
			seen[l.name(t, labVIP4)] = true
		}
		assert.Len(t, seen, 3)
	})

	st, err := l.bal.Stats()
	require.NoError(t, err)
	assert.Equal(t, AttachGeneric, st.Mode)
	assert.Zero(t, st.NoBackend)
	// Every forwarded frame is counted once for its service and once for
	// its backend. Stats reads the counters one map after another, so a
	// late frame of a closing connection can land between the reads:
	// compare once they are quiet.
	assert.Eventually(t, func() bool {
		st, err := l.bal.Stats()
		require.NoError(t, err)
		var svcPackets, bePackets uint64
		for _, s := range st.Services {
			svcPackets += s.Packets
			for _, b := range s.Backends {
				bePackets += b.Packets
			}
		}
		return st.Forwarded+st.NoBackend == svcPackets && st.Forwarded == bePackets
	}, 5*time.Second, 20*time.Millisecond, "service and backend counters add up to the global ones")
	assert.Equal(t, st.Forwarded, st.ConnHits+st.ConnMisses+st.ConnRepicks-st.NoBackend)
	t.Logf("stats: %+v", st.Counters)
}

// TestAttachAuto serves in the default mode on veth: with no XDP program
// on the peer, native XDP_TX would drop every frame, so AttachAuto must
// choose generic mode and traffic must flow; with a driver-mode program
// on the peer, it chooses driver mode.
func TestAttachAuto(t *testing.T) {
	l := newDSRLabMode(t, 2, AttachAuto)
	assert.Equal(t, AttachGeneric, l.bal.Mode(), "veth without a program on its peer")
	seen := map[string]bool{}
	for range 20 {
		seen[l.name(t, labVIP4)] = true
	}
	assert.Len(t, seen, 2, "connections get through")

	// The client's peer (its bridge port) gets an XDP program in driver
	// mode: a balancer on the client's eth0 may then use driver mode.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(Pass)), asm.Return()}})
	require.NoError(t, err)
	defer pass.Close()
	var peerLink link.Link
	require.NoError(t, l.lab.Bridge().Do(func() (err error) {
		peerLink, err = link.AttachXDP(link.XDPOptions{Program: pass, Interface: l.client.Link().PeerIndex, Flags: link.XDPDriverMode})
		return err
	}))
	defer peerLink.Close()
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	bal := serveIn(t, l.client, Config{InterfaceIndex: l.client.Link().Index, Services: []Service{{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}}})
	require.NoError(t, bal.Sync(context.Background()))
	assert.Equal(t, AttachDriver, bal.Mode(), "the peer runs a program in driver mode")
	require.NoError(t, bal.Close())

	err = l.lb.Do(func() error {
		_, err := New(Config{Interface: "nope0", Services: []Service{{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}}})
		return err
	})
	assert.ErrorContains(t, err, "nope0", "an unknown interface fails New")
}

// TestLifecycle serves a balancer with no services yet and checks the
// states around Serve: attached only while serving, detached on Close,
// methods failing with ErrServerClosed afterwards.
func TestLifecycle(t *testing.T) {
	netlab.RequireRoot(t)
	lab, err := netlab.New(t, netlab.Config{})
	require.NoError(t, err)
	h, err := lab.AddHost("lb")
	require.NoError(t, err)
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool.Close()
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: netip.MustParseAddrPort("198.18.0.9:80")}}))
	attached := func() bool {
		link, err := h.Handle().LinkByIndex(h.Link().Index)
		require.NoError(t, err)
		return link.Attrs().Xdp != nil && link.Attrs().Xdp.Attached
	}

	var bal *Balancer
	require.NoError(t, h.Do(func() (err error) {
		bal, err = New(Config{InterfaceIndex: h.Link().Index, Mode: AttachGeneric})
		return err
	}))
	assert.False(t, attached(), "nothing runs before Serve")
	require.NoError(t, bal.AddService(Service{VIP: netip.AddrPortFrom(labVIP4, 80), Pool: pool}))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- bal.Serve(ctx) }() // from another thread, in another namespace
	// The backend does not exist: Sync says which MAC is missing.
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	err = bal.Sync(sctx)
	require.ErrorIs(t, err, ErrUnresolved)
	assert.Contains(t, err.Error(), "198.18.0.9:80")
	assert.True(t, attached(), "attached in the namespace New was called in")
	assert.Equal(t, AttachGeneric, bal.Mode())
	assert.ErrorIs(t, bal.Serve(context.Background()), ErrServerClosed, "serving twice")

	cancel()
	require.NoError(t, <-served, "ending Serve's context stops it")
	assert.False(t, attached(), "detached")
	require.NoError(t, bal.Close())
	require.NoError(t, bal.Shutdown(context.Background()))
	_, err = bal.Stats()
	assert.ErrorIs(t, err, ErrServerClosed)
	assert.ErrorIs(t, bal.Sync(context.Background()), ErrServerClosed)
	assert.ErrorIs(t, bal.AddService(Service{VIP: netip.AddrPortFrom(labVIP4, 81), Pool: pool}), ErrServerClosed)

	// Closed before Serve: Serve refuses.
	require.NoError(t, h.Do(func() (err error) {
		bal, err = New(Config{InterfaceIndex: h.Link().Index})
		return err
	}))
	require.NoError(t, bal.Close())
	assert.ErrorIs(t, bal.Serve(context.Background()), ErrServerClosed)
}

// TestLabHealthChecker kills a backend's server for real: lbkit's health
// checker, probing from the balancer's namespace and driving the pool,
// takes it out, and the balancer moves new flows within one apply.
func TestLabHealthChecker(t *testing.T) {
	l := newDSRLab(t, 2)
	chk, err := health.New(health.Config{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer chk.Close()
	probe := health.ProberFunc(func(ctx context.Context, addr netip.AddrPort) (health.Report, error) {
		c, err := l.lb.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return health.Report{}, err
		}
		return health.Report{}, c.Close()
	})
	require.NoError(t, chk.Follow(l.pool4, health.Template{
		Probe: probe, Initial: health.Healthy, Interval: 50 * time.Millisecond, Timeout: 5 * time.Second, Fall: 2, Rise: 1,
	}))
	defer chk.Unfollow(l.pool4)

	seen := map[string]bool{}
	for range 40 {
		seen[l.name(t, labVIP4)] = true
	}
	require.Len(t, seen, 2)

	l.kill[1]()
	inRing := func() bool {
		st, err := l.bal.Stats()
		require.NoError(t, err)
		b, _ := st.Services[0].Backend(l.backendAddr(1))
		return b.InRing
	}
	require.Eventually(t, func() bool { return !inRing() }, 20*time.Second, 10*time.Millisecond,
		"the checker takes the dead backend out")
	for range 40 {
		assert.Equal(t, "be1", l.name(t, labVIP4), "no new connection reaches the dead backend")
	}
}

// TestLabServiceChanges changes the services while a keep-alive
// connection is open: adding a service, removing it and changing the
// connection's own service (another pool, which moves the connection's
// ring slot to another backend) leave it on its backend; new flows follow
// each change.
func TestLabServiceChanges(t *testing.T) {
	l := newDSRLab(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vip := netip.AddrPortFrom(labVIP4, 80)
	addrOf := map[string]netip.AddrPort{}
	for i, h := range l.backends {
		addrOf[h.Name()] = l.backendAddr(i)
	}

	// The new pool for the kept service: its first backend A at weight 1
	// and B at 5, so half of A's slots move to B. Open connections until
	// one is on A and hashes to a slot that moves to B: without the
	// connection table it would land on B (which resets it).
	a, bb := l.backendAddr(0), l.backendAddr(1)
	next, err := maglev.NewTable([]uint64{balancer.HashAddrPort(a), balancer.HashAddrPort(bb)}, []float64{1, 5}, RingSize)
	require.NoError(t, err)
	var kept *conn
	for range 200 {
		c := l.dial(t, labVIP4)
		n, err := c.get("/name")
		require.NoError(t, err)
		local := c.c.LocalAddr().(*net.TCPAddr).AddrPort()
		slot := int(FlowHash(Flow{Proto: TCP, Src: local, Dst: vip}) % RingSize)
		if addrOf[n] == a && next.SlotID(slot) == balancer.HashAddrPort(bb) {
			kept = c
			break
		}
		c.c.Close()
	}
	require.NotNil(t, kept, "a connection on be1 whose slot moves to be2")
	stays := func(why string) {
		t.Helper()
		for range 3 {
			n, err := kept.get("/name")
			require.NoError(t, err, why)
			require.Equal(t, "be1", n, why)
		}
	}

	// Add a service on a second VIP, served by be2 and be3 only.
	vip2 := netip.MustParseAddr("198.18.0.101")
	require.NoError(t, l.lb.AddAddr(netip.PrefixFrom(vip2, 32), "eth0"))
	for _, h := range l.backends {
		require.NoError(t, h.AddAddr(netip.PrefixFrom(vip2, 32), "lo"))
	}
	pool2 := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool2.Close()
	require.NoError(t, pool2.Set([]balancer.Backend{{Addr: l.backendAddr(1)}, {Addr: l.backendAddr(2)}}))
	require.NoError(t, l.bal.AddService(Service{VIP: netip.AddrPortFrom(vip2, 80), Pool: pool2}))
	require.NoError(t, l.bal.Sync(ctx))
	seen := map[string]bool{}
	for range 30 {
		seen[l.name(t, vip2)] = true
	}
	assert.Equal(t, map[string]bool{"be2": true, "be3": true}, seen, "the new service serves at once")
	stays("after adding a service")

	// Remove it: its frames pass to the balancer's own stack, which has
	// no listener on port 80 and refuses them.
	require.NoError(t, l.bal.RemoveService(netip.AddrPortFrom(vip2, 80), TCP))
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	_, err = l.client.DialContext(dctx, "tcp", netip.AddrPortFrom(vip2, 80).String())
	assert.ErrorContains(t, err, "refused", "a removed service's VIP reaches the balancer itself")
	stays("after removing a service")
	assert.Len(t, l.bal.Services(), 3)

	// Change the kept connection's own service: another pool, A and B at
	// 1:5, be3 gone.
	before, err := l.bal.Stats()
	require.NoError(t, err)
	pool4b := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	defer pool4b.Close()
	require.NoError(t, pool4b.Set([]balancer.Backend{{Addr: a, Weight: 1}, {Addr: bb, Weight: 5}}))
	require.NoError(t, l.bal.UpdateService(Service{VIP: vip, Pool: pool4b}))
	require.NoError(t, l.bal.Sync(ctx))
	stays("after its own service changed: the connection table carries it")
	after, err := l.bal.Stats()
	require.NoError(t, err)
	assert.Greater(t, after.ConnHits, before.ConnHits)
	assert.Equal(t, before.ConnRepicks, after.ConnRepicks, "no flow was picked again")
	counts := map[string]int{}
	for range 60 {
		counts[l.name(t, labVIP4)]++
	}
	assert.Zero(t, counts["be3"], "new flows follow the new pool")
	assert.Greater(t, counts["be2"], counts["be1"], "weighted 5:1")

	// All services at once: the IPv6 and UDP services go, one stays.
	require.NoError(t, l.bal.SetServices([]Service{{VIP: vip, Pool: pool4b}}))
	stays("after SetServices")
	assert.Len(t, l.bal.Services(), 1)
	require.ErrorIs(t, l.bal.RemoveService(netip.AddrPortFrom(labVIP6, 80), TCP), ErrNotFound)
	require.ErrorIs(t, l.bal.UpdateService(Service{VIP: netip.AddrPortFrom(labVIP6, 80), Pool: pool4b}), ErrNotFound)
	require.ErrorContains(t, l.bal.AddService(Service{VIP: vip, Pool: pool4b}), "listed twice")

	// Pick by client address: every new connection of the one client
	// goes to one backend; the open connection stays where it is.
	require.NoError(t, l.bal.UpdateService(Service{VIP: vip, Pool: l.pool4, Key: balancer.MustParseKey("client")}))
	require.NoError(t, l.bal.Sync(ctx))
	seen = map[string]bool{}
	for range 20 {
		seen[l.name(t, labVIP4)] = true
	}
	assert.Len(t, seen, 1, "one client, one backend: %v", seen)
	stays("after the key changed")
}
