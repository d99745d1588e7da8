//go:build linux

package netlab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNthAddr(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		n      int
		want   string // "" means none
	}{
		{"198.18.0.0/24", 1, "198.18.0.1/24"},
		{"198.18.0.0/24", 254, "198.18.0.254/24"},
		{"198.18.0.0/24", 255, ""}, // broadcast
		{"198.18.0.0/23", 256, "198.18.1.0/23"},
		{"198.18.0.0/30", 2, "198.18.0.2/30"},
		{"198.18.0.0/30", 3, ""},
		{"fd00:198:18::/64", 1, "fd00:198:18::1/64"},
		{"fd00:198:18::/64", 300, "fd00:198:18::12c/64"},
		{"fd00:198:18::/126", 4, ""},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.prefix, tc.n), func(t *testing.T) {
			got, ok := nthAddr(netip.MustParsePrefix(tc.prefix), tc.n)
			if tc.want == "" {
				assert.False(t, ok, "got %v", got)
				return
			}
			require.True(t, ok)
			assert.Equal(t, tc.want, got.String())
		})
	}
}

func TestOpenValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Prefix: "Bad"},
		{Prefix: "waytoolongprefix"},
		{Subnet4: netip.MustParsePrefix("10.0.0.0/24")},
		{Subnet4: netip.MustParsePrefix("198.0.0.0/8")},
		{Subnet6: netip.MustParsePrefix("198.18.0.0/24")},
		{RPFilter: 3},
	} {
		_, err := Open(cfg)
		assert.ErrorContains(t, err, "netlab:", "%+v", cfg)
	}
}

// rootState renders the root namespace's links and routes, to prove a lab
// leaves them alone.
func rootState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	links, err := netlink.LinkList()
	require.NoError(t, err)
	var lines []string
	for _, l := range links {
		a := l.Attrs()
		lines = append(lines, fmt.Sprintf("link %d %s %s master=%d", a.Index, a.Name, l.Type(), a.MasterIndex))
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unixRTTableUnspec}, netlink.RT_FILTER_TABLE)
	require.NoError(t, err)
	for _, r := range routes {
		lines = append(lines, "route "+r.String())
	}
	sort.Strings(lines)
	b.WriteString(strings.Join(lines, "\n"))
	return b.String()
}

const unixRTTableUnspec = 0

// labNamespaces lists the named namespaces that start with id.
func labNamespaces(t *testing.T, id string) []string {
	t.Helper()
	ents, err := os.ReadDir(nsDir)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), id+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestLabTraffic(t *testing.T) {
	RequireRoot(t)
	before := rootState(t)
	var id string
	t.Run("three hosts", func(t *testing.T) {
		lab, err := New(t, Config{})
		require.NoError(t, err)
		id = lab.ID()
		var hosts []*Host
		for _, name := range []string{"a", "b", "c"} {
			h, err := lab.AddHost(name)
			require.NoError(t, err)
			hosts = append(hosts, h)
		}
		assert.Len(t, labNamespaces(t, id), 4, "three hosts and the bridge")
		assert.Equal(t, "198.18.0.2", hosts[1].Addr4().String())
		assert.Equal(t, "fd00:198:18::3", hosts[2].Addr6().String())
		assert.Same(t, hosts[0], lab.Host("a"))
		assert.Equal(t, hosts, lab.Hosts())

		for i, from := range hosts {
			to := hosts[(i+1)%len(hosts)]
			for _, addr := range []netip.Addr{to.Addr4(), to.Addr6()} {
				t.Run(fmt.Sprintf("%s to %v tcp", from.Name(), addr), func(t *testing.T) {
					want := from.Addr4()
					if addr.Is6() {
						want = from.Addr6()
					}
					checkTCP(t, from, to, addr, want)
				})
				t.Run(fmt.Sprintf("%s to %v udp", from.Name(), addr), func(t *testing.T) {
					checkUDP(t, from, to, addr)
				})
			}
		}
	})
	assert.Empty(t, labNamespaces(t, id), "namespaces left after cleanup")
	assert.Equal(t, before, rootState(t), "root namespace links or routes changed")
}

// checkTCP echoes a line from one host to a listener on another.
// The accepted connection must come from wantPeer.
func checkTCP(t *testing.T, from, to *Host, addr, wantPeer netip.Addr) {
	ln, err := to.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(done)
			return
		}
		defer c.Close()
		done <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		_, _ = io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Write([]byte("hello\n"))
	require.NoError(t, err)
	buf := make([]byte, 6)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "hello\n", string(buf))
	assert.Equal(t, wantPeer, <-done)
}

// checkUDP sends a datagram from one host to another and back.
func checkUDP(t *testing.T, from, to *Host, addr netip.Addr) {
	srv, err := to.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
	require.NoError(t, err)
	defer srv.Close()
	go func() {
		buf := make([]byte, 64)
		n, peer, err := srv.ReadFrom(buf)
		if err == nil {
			_, _ = srv.WriteTo(buf[:n], peer)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "udp", srv.LocalAddr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf[:n]))
}

func TestHostHelpers(t *testing.T) {
	RequireRoot(t)
	lab, err := New(t, Config{RPFilter: 2})
	require.NoError(t, err)
	a, err := lab.AddHost("a")
	require.NoError(t, err)
	b, err := lab.AddHost("b", netip.MustParsePrefix("198.18.1.2/24"), netip.MustParsePrefix("2001:2::2/64"))
	require.NoError(t, err)

	t.Run("names", func(t *testing.T) {
		_, err := lab.AddHost("a")
		assert.ErrorContains(t, err, "already exists")
		_, err = lab.AddHost("Bad_Name")
		assert.ErrorContains(t, err, "host name")
		_, err = lab.AddHost("x", netip.MustParsePrefix("10.1.1.1/24"))
		assert.ErrorContains(t, err, "outside")
		assert.True(t, strings.HasPrefix(a.NSName(), lab.ID()+"-"))
	})

	t.Run("sysctl", func(t *testing.T) {
		v, err := a.ReadSysctl("net.ipv4.conf.all.rp_filter")
		require.NoError(t, err)
		assert.Equal(t, "2", v)
		v, err = a.ReadSysctl("net/ipv4/conf/eth0/rp_filter")
		require.NoError(t, err)
		assert.Equal(t, "2", v)
		require.NoError(t, a.Sysctl("net.ipv4.ip_forward", "1"))
		v, err = a.ReadSysctl("net.ipv4.ip_forward")
		require.NoError(t, err)
		assert.Equal(t, "1", v)
		v, err = b.ReadSysctl("net.ipv4.ip_forward")
		require.NoError(t, err)
		assert.Equal(t, "0", v, "sysctls are per namespace")
		v, err = lab.Bridge().ReadSysctl("net.ipv6.conf.eth0.accept_dad")
		assert.Error(t, err, "the bridge namespace has no eth0: %q", v)
	})

	t.Run("link", func(t *testing.T) {
		li := a.Link()
		assert.Equal(t, "eth0", li.Name)
		assert.Len(t, li.MAC, 6)
		l, err := a.Handle().LinkByIndex(li.Index)
		require.NoError(t, err)
		assert.Equal(t, li.MAC, l.Attrs().HardwareAddr)
		port, err := lab.Bridge().Handle().LinkByName(li.PeerName)
		require.NoError(t, err)
		assert.Equal(t, li.PeerIndex, port.Attrs().Index)
		assert.NotZero(t, port.Attrs().MasterIndex, "port is enslaved to br0")
	})

	t.Run("vip on lo and routes", func(t *testing.T) {
		// a and b are on different subnets of the same bridge: they reach
		// each other only through routes added in their own namespaces.
		require.NoError(t, a.AddAddr(netip.MustParsePrefix("198.18.1.1/24"), "eth0"))
		require.NoError(t, b.AddAddr(netip.MustParsePrefix("198.19.0.10/32"), "lo"))
		require.NoError(t, a.AddRoute(netip.MustParsePrefix("198.19.0.10/32"), netip.MustParseAddr("198.18.1.2")))
		require.NoError(t, b.AddAddr(netip.MustParsePrefix("2001:2:0:1::10/128"), "lo"))
		require.NoError(t, a.AddAddr(netip.MustParsePrefix("2001:2::1/64"), "eth0"))
		require.NoError(t, a.AddRoute(netip.MustParsePrefix("2001:2:0:1::/64"), netip.MustParseAddr("2001:2::2")))
		assert.Error(t, a.AddRoute(netip.MustParsePrefix("198.19.0.0/24"), netip.MustParseAddr("2001:2::2")))
		checkTCP(t, a, b, netip.MustParseAddr("198.19.0.10"), netip.MustParseAddr("198.18.1.1"))
		checkTCP(t, a, b, netip.MustParseAddr("2001:2:0:1::10"), netip.MustParseAddr("2001:2::1"))
	})

	t.Run("start a command inside", func(t *testing.T) {
		cat, err := exec.LookPath("cat")
		if err != nil {
			t.Skip("netlab: no cat")
		}
		// /proc/self/net/dev lists the links of the reader's namespace.
		cmd := exec.Command(cat, "/proc/self/net/dev")
		var out strings.Builder
		cmd.Stdout = &out
		require.NoError(t, a.Start(cmd))
		require.NoError(t, cmd.Wait())
		assert.Contains(t, out.String(), "eth0:")
		assert.NotContains(t, out.String(), "br0:", "the bridge lives elsewhere")

		out.Reset()
		cmd = exec.Command(cat, "/proc/self/net/dev")
		cmd.Stdout = &out
		require.NoError(t, lab.Bridge().Start(cmd))
		require.NoError(t, cmd.Wait())
		assert.Contains(t, out.String(), "br0:")
	})

	t.Run("offload", func(t *testing.T) {
		require.NoError(t, a.SetOffload("eth0", TxChecksum, false))
		require.NoError(t, a.SetOffload("eth0", GRO, true))
		assert.Error(t, a.SetOffload("nosuchdev", TSO, false))
	})

	t.Run("do restores the thread", func(t *testing.T) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		before, err := netns.Get()
		require.NoError(t, err)
		defer before.Close()
		require.NoError(t, a.Do(func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(a.NS()) {
				return fmt.Errorf("not in the host's namespace")
			}
			return nil
		}))
		after, err := netns.Get()
		require.NoError(t, err)
		defer after.Close()
		assert.True(t, before.Equal(after))
		assert.ErrorContains(t, a.Do(func() error { return io.ErrUnexpectedEOF }), "unexpected EOF")
	})
}

func TestCloseHalfBuiltAndTwice(t *testing.T) {
	RequireRoot(t)
	lab, err := Open(Config{Prefix: "lbkt"})
	require.NoError(t, err)
	_, err = lab.AddHost("a")
	require.NoError(t, err)
	// Two hosts may not share an address on the bridge, but the lab does
	// not police that; what it must do is tear down what it built.
	ln, err := lab.Host("a").Listen("tcp", "198.18.0.1:0")
	require.NoError(t, err)
	// A host that fails half-way (the same address twice): its namespace
	// exists, and Close must still delete it.
	_, err = lab.AddHost("b", netip.MustParsePrefix("198.18.0.9/24"), netip.MustParsePrefix("198.18.0.9/24"))
	require.Error(t, err)
	require.Len(t, labNamespaces(t, lab.ID()), 3)
	require.NoError(t, lab.Close())
	require.NoError(t, lab.Close())
	_, err = ln.Accept()
	assert.ErrorIs(t, err, net.ErrClosed, "the lab closes its sockets")
	assert.Empty(t, labNamespaces(t, lab.ID()))
	_, err = lab.AddHost("b")
	assert.ErrorContains(t, err, "closed")
}

func TestDeleteStale(t *testing.T) {
	RequireRoot(t)
	// A pid that no longer exists: a child that has exited and been reaped.
	cmd := exec.Command("/bin/true")
	require.NoError(t, cmd.Run())
	dead := cmd.Process.Pid
	stale := fmt.Sprintf("lbks-%d-1-x", dead)
	live := fmt.Sprintf("lbks-%d-1-y", os.Getpid())
	require.NoError(t, withNewNS(func() (netns.NsHandle, error) { return netns.NewNamed(stale) }, func(ns netns.NsHandle) error { return ns.Close() }))
	require.NoError(t, withNewNS(func() (netns.NsHandle, error) { return netns.NewNamed(live) }, func(ns netns.NsHandle) error { return ns.Close() }))
	t.Cleanup(func() { _ = netns.DeleteNamed(live); _ = netns.DeleteNamed(stale) })

	require.NoError(t, DeleteStale("lbks"))
	assert.Equal(t, []string{live}, labNamespaces(t, "lbks"))
}
