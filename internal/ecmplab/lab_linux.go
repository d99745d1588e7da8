//go:build linux

package ecmplab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lbkit/lbkit/internal/netlab"
)

// The lab's address plan.
var (
	// VIP is the virtual address the router spreads over the nodes.
	VIP = netip.MustParseAddr("198.18.100.1")
	// ServerNet holds the router's inner address, the nodes and the
	// backends; ClientNet the router's outer address and the client.
	ServerNet = netip.MustParsePrefix("198.18.0.0/24")
	ClientNet = netip.MustParsePrefix("198.18.1.0/24")
)

// Port is the VIP's port and the backends' (direct server return does not
// translate ports).
const Port = 80

// Config sizes a [Lab]. The zero value is 3 nodes, 3 backends and 4 client
// addresses.
type Config struct {
	// Nodes is the number of balancer nodes. Zero means 3.
	Nodes int
	// Backends is the number of backend hosts, each running a server.
	// Zero means 3.
	Backends int
	// ClientAddrs is the number of addresses the client has. Zero means 4.
	ClientAddrs int
	// Forwarding turns IPv4 forwarding on in the nodes and routes the
	// client network through the router, as a NAT balancer needs; a DSR
	// balancer needs neither.
	Forwarding bool
	// Hashing is how the router's VIP route spreads flows over several
	// nodes. Zero means HashThreshold.
	Hashing Hashing
}

// Lab is a client, a router, balancer nodes and backends. See the package
// documentation for the layout.
//
// Its fields are set by [New] and must not be changed; the hosts are safe
// for concurrent use, as netlab's are.
type Lab struct {
	// Lab is the underlying namespace lab (one bridge).
	Lab *netlab.Lab
	// Hashing is how Route spreads the VIP over several nodes.
	Hashing Hashing
	// Router forwards between the client and the nodes and holds the
	// VIP route.
	Router *netlab.Host
	// Client dials the VIP from any of ClientAddrs.
	Client      *netlab.Host
	ClientAddrs []netip.Addr
	// Nodes are the balancer nodes lb1, lb2, ...: empty namespaces for
	// the test to start a balancer in.
	Nodes []*netlab.Host
	// Backends are be1, be2, ..., each serving on Port.
	Backends []*Backend
}

// Backend is a backend host and its server.
type Backend struct {
	Host *netlab.Host
	// Addr is the server's address and port, the member of the pools.
	Addr netip.AddrPort
	srv  *server
}

// Name returns the backend's name, as its server answers it.
func (b *Backend) Name() string { return b.Host.Name() }

// Conns returns how many connections the backend's server holds open.
func (b *Backend) Conns() int { return b.srv.open() }

var (
	routerServer = netip.MustParseAddr("198.18.0.1")
	routerClient = netip.MustParseAddr("198.18.1.1")
)

func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	a[3] += byte(n)
	return netip.AddrFrom4(a)
}

// New builds the lab for a test and tears it down in t.Cleanup (after a
// half-built lab too). Call [netlab.RequireRoot] first.
func New(t testing.TB, cfg Config) (*Lab, error) {
	t.Helper()
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Backends == 0 {
		cfg.Backends = 3
	}
	if cfg.ClientAddrs == 0 {
		cfg.ClientAddrs = 4
	}
	if cfg.Nodes > 9 || cfg.Backends > 9 || cfg.ClientAddrs > 9 {
		return nil, errors.New("ecmplab: at most 9 nodes, backends and client addresses")
	}
	nl, err := netlab.New(t, netlab.Config{Prefix: "ecmp"})
	if err != nil {
		return nil, err
	}
	l := &Lab{Lab: nl, Hashing: cfg.Hashing}
	pfx := func(a netip.Addr, bits int) netip.Prefix { return netip.PrefixFrom(a, bits) }

	l.Router, err = nl.AddHost("router", pfx(routerClient, 24), pfx(routerServer, 24))
	if err != nil {
		return nil, err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		// Hash forwarded flows on the 5-tuple, not on addresses only,
		// so one client's connections spread over the nodes. Policy 1
		// (L4) would not do here: it takes a packet's existing L4 hash
		// when it has one, and a packet from a local socket, which is
		// what a veth delivers, carries the socket's random txhash,
		// which TCP redraws on every retransmission timeout; a flow
		// would then hop to another node mid-flight. A NIC's RSS hash
		// is a true 5-tuple hash; policy 3 with the five fields
		// (source and destination address, protocol, source and
		// destination port) hashes the headers themselves, as a real
		// router does.
		{"net.ipv4.fib_multipath_hash_policy", "3"},
		{"net.ipv4.fib_multipath_hash_fields", "0x0037"},
	} {
		if err := l.Router.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}

	var caddrs []netip.Prefix
	for i := range cfg.ClientAddrs {
		a := nth(ClientNet, 10+i)
		l.ClientAddrs = append(l.ClientAddrs, a)
		caddrs = append(caddrs, pfx(a, 24))
	}
	l.Client, err = nl.AddHost("client", caddrs...)
	if err != nil {
		return nil, err
	}
	if err := l.Client.AddRoute(pfx(VIP, 32), routerClient); err != nil {
		return nil, err
	}

	for i := range cfg.Nodes {
		h, err := nl.AddHost(fmt.Sprintf("lb%d", i+1), pfx(nth(ServerNet, 11+i), 24))
		if err != nil {
			return nil, err
		}
		if cfg.Forwarding {
			if err := h.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
				return nil, err
			}
			if err := h.AddRoute(ClientNet, routerServer); err != nil {
				return nil, err
			}
		}
		l.Nodes = append(l.Nodes, h)
	}

	for i := range cfg.Backends {
		addr := nth(ServerNet, 21+i)
		h, err := nl.AddHost(fmt.Sprintf("be%d", i+1), pfx(addr, 24))
		if err != nil {
			return nil, err
		}
		if err := h.AddAddr(pfx(VIP, 32), "lo"); err != nil {
			return nil, err
		}
		for _, kv := range [][2]string{
			{"net.ipv4.conf.all.arp_ignore", "1"},
			{"net.ipv4.conf.all.arp_announce", "2"},
			{"net.ipv4.conf.eth0.arp_ignore", "1"},
			{"net.ipv4.conf.eth0.arp_announce", "2"},
			{"net.ipv4.conf.all.rp_filter", "0"},
			{"net.ipv4.conf.eth0.rp_filter", "0"},
		} {
			if err := h.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		if err := h.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), routerServer); err != nil {
			return nil, err
		}
		ln, err := h.Listen("tcp4", fmt.Sprintf(":%d", Port))
		if err != nil {
			return nil, err
		}
		srv := serve(h.Name(), ln)
		t.Cleanup(srv.close)
		l.Backends = append(l.Backends, &Backend{Host: h, Addr: netip.AddrPortFrom(addr, Port), srv: srv})
	}
	return l, nil
}

// NodeAddr returns node i's address (i from 0).
func (l *Lab) NodeAddr(i int) netip.Addr { return l.Nodes[i].Addr4() }

// Route points the router's VIP route at the given nodes (indexes from 0):
// a multipath route or a resilient nexthop group (as the lab's Hashing
// says) hashing on L4 over several, a plain route through one.
// It replaces the route in place, as a router's health check does when a
// node fails or comes back.
func (l *Lab) Route(nodes ...int) error {
	if len(nodes) == 0 {
		return errors.New("ecmplab: route through no node")
	}
	eth, err := l.Router.Handle().LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("ecmplab: router: %w", err)
	}
	r := &netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Dst:       &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)},
	}
	if len(nodes) > 1 && l.Hashing == Resilient {
		return l.routeResilient(eth.Attrs().Index, nodes)
	}
	if len(nodes) == 1 {
		r.Gw = l.NodeAddr(nodes[0]).AsSlice()
	} else {
		r.LinkIndex = 0
		for _, n := range nodes {
			r.MultiPath = append(r.MultiPath, &netlink.NexthopInfo{LinkIndex: eth.Attrs().Index, Gw: l.NodeAddr(n).AsSlice()})
		}
	}
	if err := l.Router.Handle().RouteReplace(r); err != nil {
		return fmt.Errorf("ecmplab: route %v via nodes %v: %w", VIP, nodes, err)
	}
	return nil
}

// Conn is a connection from the client to the VIP.
type Conn struct {
	c *net.TCPConn
	r *bufio.Reader
	// Local is the client's address and port.
	Local netip.AddrPort
}

// Reply is a backend server's answer.
type Reply struct {
	// Backend is the name of the backend that answered.
	Backend string
	// Peer is the source the backend saw: the client under direct server
	// return, the node under FullNAT.
	Peer netip.AddrPort
}

// Dial connects from the client's address src (port 0: any) to the VIP.
func (l *Lab) Dial(ctx context.Context, src netip.AddrPort) (*Conn, error) {
	var c net.Conn
	err := l.Client.Do(func() (err error) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src)}
		c, err = d.DialContext(ctx, "tcp4", netip.AddrPortFrom(VIP, Port).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ecmplab: dial from %v: %w", src, err)
	}
	tc := c.(*net.TCPConn)
	return &Conn{c: tc, r: bufio.NewReader(tc), Local: tc.LocalAddr().(*net.TCPAddr).AddrPort()}, nil
}

// Ask sends one line and reads the backend's answer, within timeout.
func (c *Conn) Ask(timeout time.Duration) (Reply, error) {
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Reply{}, err
	}
	if _, err := c.c.Write([]byte("?\n")); err != nil {
		return Reply{}, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	name, peer, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return Reply{}, fmt.Errorf("ecmplab: bad answer %q", line)
	}
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return Reply{}, fmt.Errorf("ecmplab: bad answer %q: %w", line, err)
	}
	return Reply{Backend: name, Peer: ap}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Abort closes the connection with a reset (SO_LINGER 0), so the client
// keeps no TIME_WAIT state and the same address and port can be dialed
// again at once.
func (c *Conn) Abort() error {
	if err := c.c.SetLinger(0); err != nil {
		return err
	}
	return c.c.Close()
}

// server answers each line of each connection with "<name> <peer>\n".
type server struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func serve(name string, ln net.Listener) *server {
	s := &server{name: name, ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Go(func() { s.handle(c) })
			s.mu.Unlock()
		}
	})
	return s
}

func (s *server) handle(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	answer := []byte(s.name + " " + c.RemoteAddr().String() + "\n")
	r := bufio.NewReader(c)
	for {
		if _, err := r.ReadSlice('\n'); err != nil {
			return
		}
		if _, err := c.Write(answer); err != nil {
			return
		}
	}
}

func (s *server) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// close stops the server and closes its connections, and waits for its
// goroutines.
func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
