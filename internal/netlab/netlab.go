//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsDir is where named network namespaces are bind-mounted (as by ip netns).
const nsDir = "/var/run/netns"

// Default address plan of a lab. Both ranges are reserved for benchmarks
// and private use, so a lab can never shadow a real network.
var (
	DefaultSubnet4 = netip.MustParsePrefix("198.18.0.0/24")
	DefaultSubnet6 = netip.MustParsePrefix("fd00:198:18::/64")
)

// benchRange is the IPv4 range every lab address must come from.
var benchRange = netip.MustParsePrefix("198.18.0.0/15")

// ErrNotPermitted is the error (wrapped) of [Open] and [New] when the
// process may not create network namespaces.
var ErrNotPermitted = errors.New("netlab: creating network namespaces is not permitted")

var (
	probeOnce sync.Once
	probeErr  error
)

// probe checks once per process that an anonymous network namespace can
// be created, leaving the calling thread where it was.
func probe() error {
	probeOnce.Do(func() {
		if os.Geteuid() != 0 {
			probeErr = fmt.Errorf("%w: not running as root (euid %d)", ErrNotPermitted, os.Geteuid())
			return
		}
		probeErr = withNewNS(func() (netns.NsHandle, error) { return netns.New() }, func(ns netns.NsHandle) error {
			return ns.Close()
		})
		if probeErr != nil {
			probeErr = fmt.Errorf("%w: %v", ErrNotPermitted, probeErr)
		}
	})
	return probeErr
}

// RequireRoot skips the test, with a message that says why and how to run
// it, unless the process is root and may create network namespaces. Call
// it first in every test that builds a lab.
func RequireRoot(t testing.TB) {
	t.Helper()
	if err := probe(); err != nil {
		t.Skipf("netlab: skipping privileged lab test: %v (run as root with CAP_SYS_ADMIN and CAP_NET_ADMIN, e.g. sudo go test)", err)
	}
}

// Config configures a [Lab]. The zero value is a useful lab.
type Config struct {
	// Prefix starts every namespace name, followed by the process id, the
	// lab's sequence number and the host name. Lowercase letters and
	// digits, at most 8. Empty means "lbk".
	Prefix string
	// Subnet4 is the IPv4 subnet hosts get addresses from when AddHost is
	// given none. It must lie in 198.18.0.0/15. Zero means DefaultSubnet4.
	Subnet4 netip.Prefix
	// Subnet6 is the IPv6 subnet hosts get addresses from when AddHost is
	// given none. Zero means DefaultSubnet6.
	Subnet6 netip.Prefix
	// RPFilter is the reverse-path filter mode (0 off, 1 strict, 2 loose)
	// set explicitly on every host's "all", "default", lo and eth0, since
	// a new namespace otherwise inherits the root namespace's. Zero means
	// off, which NAT and direct-server-return labs need.
	RPFilter int
	// MTU of the veth links. Zero means 1500.
	MTU int
}

// LinkInfo describes a host's link to the lab bridge.
type LinkInfo struct {
	// Name and Index identify the host's end of the veth pair, inside the
	// host's namespace (always "eth0").
	Name  string
	Index int
	// MAC is the hardware address of the host's end.
	MAC net.HardwareAddr
	// PeerName and PeerIndex identify the bridge port end, inside the
	// bridge's namespace.
	PeerName  string
	PeerIndex int
}

// Lab is a set of hosts, each in its own network namespace, joined by a
// bridge in a namespace of its own.
//
// AddHost, Close and the Host methods are safe for concurrent use. A lab
// is torn down by Close (registered with t.Cleanup by [New]); after Close,
// its hosts must not be used.
type Lab struct {
	cfg Config
	id  string // "<prefix>-<pid>-<seq>"

	bridge *Host

	mu      sync.Mutex
	hosts   []*Host
	byName  map[string]*Host
	closers []io.Closer
	next    int
	closed  bool
}

// Host is one machine of a lab: a network namespace with lo and eth0 up,
// eth0 bridged to every other host.
type Host struct {
	lab    *Lab
	name   string
	nsName string
	ns     netns.NsHandle
	h      *netlink.Handle
	link   LinkInfo
	addrs  []netip.Prefix
}

var labSeq atomic.Int64

// New builds an empty lab for a test and tears it down in t.Cleanup. It
// fails the test when the lab cannot be built; call [RequireRoot] first to
// skip where labs are not permitted.
func New(t testing.TB, cfg Config) (*Lab, error) {
	t.Helper()
	lab, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("netlab: teardown: %v", err)
		}
	})
	return lab, nil
}

// Open builds an empty lab: the bridge namespace with its bridge. The
// caller must Close it. Open first deletes namespaces with the same prefix
// left behind by processes that no longer exist.
func Open(cfg Config) (*Lab, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "lbk"
	}
	if len(cfg.Prefix) > 8 || strings.Trim(cfg.Prefix, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return nil, fmt.Errorf("netlab: prefix %q: want 1-8 lowercase letters or digits", cfg.Prefix)
	}
	if !cfg.Subnet4.IsValid() {
		cfg.Subnet4 = DefaultSubnet4
	}
	if !cfg.Subnet6.IsValid() {
		cfg.Subnet6 = DefaultSubnet6
	}
	cfg.Subnet4, cfg.Subnet6 = cfg.Subnet4.Masked(), cfg.Subnet6.Masked()
	if !cfg.Subnet4.Addr().Is4() || cfg.Subnet4.Bits() < benchRange.Bits() || !benchRange.Contains(cfg.Subnet4.Addr()) {
		return nil, fmt.Errorf("netlab: Subnet4 %v must lie in %v", cfg.Subnet4, benchRange)
	}
	if !cfg.Subnet6.Addr().Is6() || cfg.Subnet6.Addr().Is4In6() {
		return nil, fmt.Errorf("netlab: Subnet6 %v is not an IPv6 prefix", cfg.Subnet6)
	}
	if cfg.RPFilter < 0 || cfg.RPFilter > 2 {
		return nil, fmt.Errorf("netlab: RPFilter %d must be 0, 1 or 2", cfg.RPFilter)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if err := probe(); err != nil {
		return nil, err
	}
	if err := DeleteStale(cfg.Prefix); err != nil {
		return nil, err
	}
	lab := &Lab{
		cfg:    cfg,
		id:     fmt.Sprintf("%s-%d-%d", cfg.Prefix, os.Getpid(), labSeq.Add(1)),
		byName: make(map[string]*Host),
	}
	br, err := lab.newNamespace("br", func() error {
		// br_netfilter, when loaded, would pass bridged frames through
		// the bridge namespace's iptables; labs want a plain switch.
		for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
			if err := writeSysctl("net/bridge/"+k, "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, lab.Close())
	}
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: cfg.MTU}}
	if err := br.h.LinkAdd(bridge); err != nil {
		return nil, errors.Join(fmt.Errorf("netlab: add bridge: %w", err), lab.Close())
	}
	if err := br.h.LinkSetUp(bridge); err != nil {
		return nil, errors.Join(fmt.Errorf("netlab: bridge up: %w", err), lab.Close())
	}
	return lab, nil
}

// ID returns the lab's namespace name prefix, "<prefix>-<pid>-<seq>".
func (l *Lab) ID() string { return l.id }

// Bridge returns the pseudo-host holding the bridge "br0" and one port per
// host. It has no addresses; use it to inspect or filter bridged traffic.
func (l *Lab) Bridge() *Host { return l.bridge }

// Host returns the host called name, or nil.
func (l *Lab) Host(name string) *Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byName[name]
}

// Hosts returns the lab's hosts in the order they were added.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// AddHost adds a host called name (lowercase letters, digits and '-', at
// most 16) in a new namespace, with eth0 bridged to the other hosts and
// the given addresses on eth0. With no addresses it gets the next free
// address of each of the lab's subnets (198.18.0.1/24 and
// fd00:198:18::1/64 for the first host, .2 and ::2 for the next...).
// IPv6 duplicate address detection is off, so addresses work at once,
// and ICMP redirects are neither sent nor accepted, so a host that routes
// between subnets of the bridge stays on the path.
// AddHost adds no route beyond the subnets' own.
func (l *Lab) AddHost(name string, addrs ...netip.Prefix) (*Host, error) {
	if name == "" || len(name) > 16 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || name == "br" {
		return nil, fmt.Errorf("netlab: host name %q: want 1-16 lowercase letters, digits or '-' (not \"br\")", name)
	}
	for _, a := range addrs {
		if !a.IsValid() {
			return nil, fmt.Errorf("netlab: host %s: invalid address", name)
		}
		if a.Addr().Is4() && !benchRange.Contains(a.Addr()) {
			return nil, fmt.Errorf("netlab: host %s: address %v is outside %v", name, a, benchRange)
		}
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("netlab: lab is closed")
	}
	if l.byName[name] != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("netlab: host %q already exists", name)
	}
	l.next++
	idx := l.next
	l.byName[name] = nil // reserve the name
	l.mu.Unlock()

	if len(addrs) == 0 {
		a4, ok4 := nthAddr(l.cfg.Subnet4, idx)
		a6, ok6 := nthAddr(l.cfg.Subnet6, idx)
		if !ok4 || !ok6 {
			return nil, fmt.Errorf("netlab: host %s: lab subnets are full", name)
		}
		addrs = []netip.Prefix{a4, a6}
	}

	rp := strconv.Itoa(l.cfg.RPFilter)
	host, err := l.newNamespace(name, func() error {
		// Set before eth0 exists so it inherits the defaults.
		for _, kv := range [][2]string{
			{"net/ipv4/conf/all/rp_filter", rp},
			{"net/ipv4/conf/default/rp_filter", rp},
			{"net/ipv4/conf/lo/rp_filter", rp},
			// Hosts of several subnets share one bridge; a router among
			// them would otherwise redirect peers around itself (IPv6
			// redirects name on-link destinations), which breaks NAT.
			{"net/ipv4/conf/all/accept_redirects", "0"},
			{"net/ipv4/conf/default/accept_redirects", "0"},
			{"net/ipv4/conf/all/send_redirects", "0"},
			{"net/ipv4/conf/default/send_redirects", "0"},
			{"net/ipv6/conf/all/accept_redirects", "0"},
			{"net/ipv6/conf/default/accept_redirects", "0"},
			{"net/ipv6/conf/all/accept_dad", "0"},
			{"net/ipv6/conf/default/accept_dad", "0"},
			{"net/ipv6/conf/all/disable_ipv6", "0"},
			{"net/ipv6/conf/default/disable_ipv6", "0"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		l.forget(name)
		return nil, err
	}
	host.addrs = append([]netip.Prefix(nil), addrs...)
	if err := l.wire(host, idx); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.byName[name] = host
	l.mu.Unlock()
	return host, nil
}

// forget releases a reserved host name after a failed AddHost.
func (l *Lab) forget(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byName[name] == nil {
		delete(l.byName, name)
	}
}

// wire connects host to the bridge and configures its addresses.
func (l *Lab) wire(host *Host, idx int) error {
	port := "v" + strconv.Itoa(idx)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: l.cfg.MTU},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(host.ns)),
	}
	br := l.bridge.h
	if err := br.LinkAdd(veth); err != nil {
		return fmt.Errorf("netlab: host %s: add veth: %w", host.name, err)
	}
	master, err := br.LinkByName("br0")
	if err != nil {
		return fmt.Errorf("netlab: host %s: %w", host.name, err)
	}
	pl, err := br.LinkByName(port)
	if err != nil {
		return fmt.Errorf("netlab: host %s: %w", host.name, err)
	}
	if err := br.LinkSetMaster(pl, master); err != nil {
		return fmt.Errorf("netlab: host %s: bridge port: %w", host.name, err)
	}
	if err := br.LinkSetUp(pl); err != nil {
		return fmt.Errorf("netlab: host %s: port up: %w", host.name, err)
	}
	h := host.h
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netlab: host %s: %w", host.name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netlab: host %s: lo up: %w", host.name, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("netlab: host %s: %w", host.name, err)
	}
	if err := host.Do(func() error {
		if err := writeSysctl("net/ipv4/conf/eth0/rp_filter", strconv.Itoa(l.cfg.RPFilter)); err != nil {
			return err
		}
		return writeSysctl("net/ipv6/conf/eth0/accept_dad", "0")
	}); err != nil {
		return err
	}
	for _, a := range host.addrs {
		if err := h.AddrAdd(eth, nlAddr(a)); err != nil {
			return fmt.Errorf("netlab: host %s: add %v: %w", host.name, a, err)
		}
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("netlab: host %s: eth0 up: %w", host.name, err)
	}
	host.link = LinkInfo{
		Name:      "eth0",
		Index:     eth.Attrs().Index,
		MAC:       eth.Attrs().HardwareAddr,
		PeerName:  port,
		PeerIndex: pl.Attrs().Index,
	}
	return nil
}

// newNamespace creates the namespace "<id>-<name>", runs setup inside it
// on the creating thread, opens a netlink handle to it and registers it
// with the lab for teardown.
func (l *Lab) newNamespace(name string, setup func() error) (*Host, error) {
	nsName := l.id + "-" + name
	host := &Host{lab: l, name: name, nsName: nsName, ns: -1}
	// Registered before it exists, so Close deletes whatever part of it
	// gets built.
	l.mu.Lock()
	if name == "br" {
		l.bridge = host
	} else {
		l.hosts = append(l.hosts, host)
	}
	l.mu.Unlock()
	var setupErr error
	err := withNewNS(func() (netns.NsHandle, error) {
		// A name left by a crashed run of this very pid and sequence.
		_ = netns.DeleteNamed(nsName)
		return netns.NewNamed(nsName)
	}, func(ns netns.NsHandle) error {
		host.ns = ns
		setupErr = setup()
		return nil
	})
	if err != nil {
		// NewNamed may leave the file behind when the mount fails.
		_ = os.Remove(filepath.Join(nsDir, nsName))
		return nil, fmt.Errorf("netlab: namespace %s: %w", nsName, err)
	}
	if setupErr != nil {
		return nil, fmt.Errorf("netlab: namespace %s: %w", nsName, setupErr)
	}
	h, err := netlink.NewHandleAt(host.ns)
	if err != nil {
		return nil, fmt.Errorf("netlab: namespace %s: netlink: %w", nsName, err)
	}
	host.h = h
	return host, nil
}

// withNewNS runs create, which switches the calling thread into a new
// namespace, then use inside that namespace, then switches back, all on
// one locked OS thread. If switching back fails the thread stays locked
// and is discarded by the runtime when the goroutine ends.
func withNewNS(create func() (netns.NsHandle, error), use func(netns.NsHandle) error) error {
	errc := make(chan error, 1)
	// A fresh goroutine, so a thread that cannot switch back dies with it
	// instead of carrying a foreign namespace into the caller's code.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := create()
		var useErr error
		if err == nil {
			useErr = use(ns)
		}
		if serr := netns.Set(orig); serr != nil {
			if err == nil && ns.IsOpen() {
				ns.Close()
			}
			errc <- errors.Join(err, fmt.Errorf("netlab: switch back to the original namespace: %w", serr))
			return // thread stays locked: the runtime discards it
		}
		runtime.UnlockOSThread()
		errc <- errors.Join(err, useErr)
	}()
	return <-errc
}

// Close tears the lab down: it closes the sockets opened through its
// hosts, the netlink and namespace handles, and deletes every namespace
// (which destroys the veths and the bridge). It is safe to call more than
// once and on a half-built lab.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	closers, hosts, bridge := l.closers, l.hosts, l.bridge
	l.closers = nil
	l.mu.Unlock()

	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	all := append([]*Host(nil), hosts...)
	if bridge != nil {
		all = append(all, bridge)
	}
	for _, h := range all {
		if h.h != nil {
			h.h.Close()
		}
		if h.ns.IsOpen() {
			h.ns.Close()
		}
		if err := netns.DeleteNamed(h.nsName); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("netlab: delete namespace %s: %w", h.nsName, err))
		}
	}
	return errors.Join(errs...)
}

// track registers c to be closed when the lab closes.
func (l *Lab) track(c io.Closer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return
	}
	l.closers = append(l.closers, c)
}

// DeleteStale deletes the named namespaces "<prefix>-<pid>-..." whose
// process no longer exists: what a crashed or killed test run left behind.
// Namespaces of live processes, this one included, are left alone. [Open]
// calls it.
func DeleteStale(prefix string) error {
	ents, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix+"-")
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // alive
		}
		if err := netns.DeleteNamed(e.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			// An unmounted leftover file: remove it alone.
			if rerr := os.Remove(filepath.Join(nsDir, e.Name())); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("netlab: delete stale namespace %s: %w", e.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Name returns the host's name within its lab.
func (h *Host) Name() string { return h.name }

// NSName returns the name of the host's namespace, as `ip netns` lists it.
func (h *Host) NSName() string { return h.nsName }

// NS returns a handle to the host's namespace. It stays owned by the lab:
// do not close it.
func (h *Host) NS() netns.NsHandle { return h.ns }

// Handle returns a netlink handle bound to the host's namespace. It is
// owned by the lab and safe for concurrent use.
func (h *Host) Handle() *netlink.Handle { return h.h }

// Link describes the host's eth0 and its bridge port.
func (h *Host) Link() LinkInfo { return h.link }

// Addrs returns the addresses given to eth0 by AddHost (not those added
// later with AddAddr).
func (h *Host) Addrs() []netip.Prefix { return append([]netip.Prefix(nil), h.addrs...) }

// Addr4 returns the host's first IPv4 address on eth0, or the zero Addr.
func (h *Host) Addr4() netip.Addr { return h.first(true) }

// Addr6 returns the host's first IPv6 address on eth0, or the zero Addr.
func (h *Host) Addr6() netip.Addr { return h.first(false) }

func (h *Host) first(v4 bool) netip.Addr {
	for _, a := range h.addrs {
		if a.Addr().Is4() == v4 {
			return a.Addr()
		}
	}
	return netip.Addr{}
}

// Do runs fn on an OS thread switched into the host's namespace and
// switches back afterwards. fn must not start goroutines that expect to
// be in the namespace (they are not), but sockets it creates keep the
// namespace and may be used from anywhere. Do blocks until fn returns.
//
// If the thread cannot switch back, Do returns an error and leaves the
// thread locked to the calling goroutine, so the runtime discards that
// thread when the goroutine exits; the caller should not go on using the
// goroutine for namespace-sensitive work.
func (h *Host) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: %s: current namespace: %w", h.name, err)
	}
	defer orig.Close()
	if err := netns.Set(h.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: %s: enter namespace: %w", h.name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("netlab: %s: leave namespace: %w", h.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen announces on the local network address inside the host's
// namespace, as [net.Listen] does. The lab closes the listener when it
// closes, if the caller has not.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, err
	}
	h.lab.track(ln)
	return ln, nil
}

// ListenPacket is like [net.ListenPacket] inside the host's namespace. The
// lab closes the socket when it closes, if the caller has not.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, err
	}
	h.lab.track(pc)
	return pc, nil
}

// DialContext connects to address from inside the host's namespace, as
// [net.Dialer.DialContext] does; address must be a literal IP and port. It
// fits [net/http.Transport.DialContext]. The caller closes the connection.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Start starts cmd inside the host's namespace: the child inherits the
// namespace of the OS thread that forks it, so Start forks from a thread
// switched into the namespace. The caller waits for cmd as usual. Use it
// for tools such as nft, wrk or tcpdump.
func (h *Host) Start(cmd *exec.Cmd) error { return h.Do(cmd.Start) }

// Sysctl writes value to the sysctl key ("net.ipv4.ip_forward" or
// "net/ipv4/conf/eth0/rp_filter") in the host's namespace.
func (h *Host) Sysctl(key, value string) error {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return h.Do(func() error { return writeSysctl(key, value) })
}

// ReadSysctl reads the sysctl key in the host's namespace, without the
// trailing newline.
func (h *Host) ReadSysctl(key string) (string, error) {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	var v string
	err := h.Do(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", filepath.Clean("/"+key)))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// AddAddr adds prefix to the link dev in the host's namespace, for example
// a VIP on lo. IPv6 addresses skip duplicate address detection.
func (h *Host) AddAddr(prefix netip.Prefix, dev string) error {
	link, err := h.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("netlab: %s: %s: %w", h.name, dev, err)
	}
	if err := h.h.AddrAdd(link, nlAddr(prefix)); err != nil {
		return fmt.Errorf("netlab: %s: add %v to %s: %w", h.name, prefix, dev, err)
	}
	return nil
}

// AddRoute adds a route to dst through the gateway gw in the host's
// namespace only (a default route when dst is 0.0.0.0/0 or ::/0).
func (h *Host) AddRoute(dst netip.Prefix, gw netip.Addr) error {
	if !dst.IsValid() || !gw.IsValid() || dst.Addr().Is4() != gw.Is4() {
		return fmt.Errorf("netlab: %s: route %v via %v: invalid or mixed families", h.name, dst, gw)
	}
	r := &netlink.Route{Dst: ipNet(dst.Masked()), Gw: gw.AsSlice()}
	if err := h.h.RouteAdd(r); err != nil {
		return fmt.Errorf("netlab: %s: route %v via %v: %w", h.name, dst, gw, err)
	}
	return nil
}

// Offload names a veth offload feature for [Host.SetOffload].
type Offload uint32

// Offload features, as ethtool -K names them.
const (
	TxChecksum    Offload = unix.ETHTOOL_STXCSUM // tx-checksumming
	RxChecksum    Offload = unix.ETHTOOL_SRXCSUM // rx-checksumming
	ScatterGather Offload = unix.ETHTOOL_SSG     // scatter-gather
	TSO           Offload = unix.ETHTOOL_STSO    // tcp-segmentation-offload
	GSO           Offload = unix.ETHTOOL_SGSO    // generic-segmentation-offload
	GRO           Offload = unix.ETHTOOL_SGRO    // generic-receive-offload
)

// SetOffload turns an offload feature of the link dev on or off, through
// the SIOCETHTOOL ioctl in the host's namespace (no ethtool binary needed).
func (h *Host) SetOffload(dev string, f Offload, on bool) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("netlab: %s: socket: %w", h.name, err)
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{cmd: uint32(f)}
		if on {
			val.data = 1
		}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:unix.IFNAMSIZ-1], dev)
		ifr.data = unsafe.Pointer(&val)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		if errno != 0 {
			return fmt.Errorf("netlab: %s: ethtool %#x on %s: %w", h.name, uint32(f), dev, errno)
		}
		return nil
	})
}

// writeSysctl writes value to /proc/sys/<key> in the calling thread's
// network namespace.
func writeSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", filepath.Clean("/"+key))
	if err := os.WriteFile(p, []byte(value), 0); err != nil {
		return fmt.Errorf("netlab: sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// nthAddr returns the n-th address of p (n ≥ 1) with p's length, or false
// when p has no such host address.
func nthAddr(p netip.Prefix, n int) (netip.Prefix, bool) {
	a := p.Masked().Addr().AsSlice()
	carry := n
	for i := len(a) - 1; i >= 0 && carry > 0; i-- {
		s := int(a[i]) + carry
		a[i] = byte(s)
		carry = s >> 8
	}
	addr, _ := netip.AddrFromSlice(a)
	if carry != 0 || !p.Contains(addr) {
		return netip.Prefix{}, false
	}
	if addr.Is4() && !p.Contains(addr.Next()) {
		return netip.Prefix{}, false // the broadcast address
	}
	return netip.PrefixFrom(addr, p.Bits()), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
