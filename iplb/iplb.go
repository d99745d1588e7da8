package iplb

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Proto is a service's transport protocol.
type Proto = balancer.Proto

// Supported protocols, by their IP protocol numbers.
const (
	TCP = balancer.TCP
	UDP = balancer.UDP
)

// Mode says how a service translates addresses.
type Mode uint8

const (
	// Gateway rewrites the destination only (DNAT). Backends must route
	// replies through the balancer; they see the client's address.
	Gateway Mode = iota
	// FullNAT rewrites the destination and the source (DNAT + SNAT to
	// the balancer's address). Backends need no route back; they see the
	// balancer as the client.
	FullNAT
)

// String returns "gateway" or "fullnat".
func (m Mode) String() string {
	switch m {
	case Gateway:
		return "gateway"
	case FullNAT:
		return "fullnat"
	default:
		return fmt.Sprintf("mode(%d)", uint8(m))
	}
}

// MarshalText returns the mode's name, as String.
func (m Mode) MarshalText() ([]byte, error) {
	if m > FullNAT {
		return nil, fmt.Errorf("iplb: unknown %v", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText parses "gateway" or "fullnat".
func (m *Mode) UnmarshalText(text []byte) error {
	switch string(text) {
	case "gateway":
		*m = Gateway
	case "fullnat":
		*m = FullNAT
	default:
		return fmt.Errorf("iplb: unknown mode %q: want gateway or fullnat", text)
	}
	return nil
}

// Service is a virtual service: traffic to VIP with protocol Proto is
// spread over the ready members of Pool.
type Service struct {
	// Name identifies the service within the balancer and names its
	// nftables objects: 1-32 letters, digits, '_' or '-'. Required.
	Name string
	// VIP is the virtual address and port clients connect to. The
	// balancer must receive this traffic (the VIP on one of its links, or
	// routed to it). Required.
	VIP netip.AddrPort
	// Proto is TCP or UDP. Zero means TCP.
	Proto Proto
	// Mode is Gateway (the zero value) or FullNAT.
	Mode Mode
	// SNAT is the source address FullNAT rewrites to. The zero value
	// means masquerade: the address of the link toward the backend.
	SNAT netip.Addr
	// Key says what the kernel hashes to choose a new flow's slot in the
	// service's Maglev table, as nft's jhash can:
	//
	//   - "flow" (balancer.KeyFlow): the client's address and port. The
	//     service fixes the destination and protocol, so this is the
	//     5-tuple: a client port keeps its backend while the ready set is
	//     unchanged, and a change moves only the changed backends' share
	//     of new flows.
	//   - "client" (balancer.KeyClient): the client's address under the
	//     key's prefix length (Bits4, Bits6), so every connection of a
	//     client (or a /24) goes to one backend.
	//   - no key (the zero value): no hash; new flows take the slots in
	//     turn (nft numgen), a weighted round robin.
	//
	// The kernel sees packets, not requests: a header, cookie, path or
	// query key falls back to the client address, as for every front-end
	// that cannot see it.
	Key balancer.Key
	// Pool holds the backends, with health, drain and weights; iplb
	// follows its snapshots and never closes it. Members must have the
	// VIP's address family: a ready member of the other family makes
	// the snapshot fail to apply (AddService and friends return the
	// error; the control loop keeps the last state it applied and
	// reports it in ServiceStats.Err). Required.
	Pool *balancer.Pool
	// TableSize is the number of slots, a prime above the member count.
	// Zero chooses from the member count: 251, 1021, 4093, 16381 or
	// 65521, the smallest with at least 100 slots per member.
	TableSize int
	// Seed seeds the flow hash. Zero derives it from Name, so it is stable
	// across restarts.
	Seed uint32
}

// hashing is what the kernel rule of a service hashes.
type hashing uint8

const (
	hashNone   hashing = iota // numgen: round robin over the slots
	hashFlow                  // source address and port
	hashClient                // source address under a prefix
)

// hashing returns what the kernel hashes for svc's key, and for
// hashClient the prefix length of the VIP's family (0: the whole
// address).
func (svc *Service) hashing() (hashing, int) {
	switch svc.Key.Source {
	case balancer.KeyNone:
		return hashNone, 0
	case balancer.KeyFlow:
		return hashFlow, 0
	}
	bits, full := svc.Key.Bits6, 128
	if svc.VIP.Addr().Is4() {
		bits, full = svc.Key.Bits4, 32
	}
	if bits >= full {
		bits = 0
	}
	return hashClient, bits
}

// tableSizes are the automatic table sizes, all prime.
var tableSizes = []int{251, 1021, 4093, 16381, 65521}

// autoSize returns the table size for n members: the smallest of
// tableSizes with at least 100 slots per member (Maglev's advice: with
// fewer, a change moves noticeably more than the changed backend's share
// of slots), or the largest.
func autoSize(n int) int {
	for _, s := range tableSizes {
		if s >= 100*n {
			return s
		}
	}
	return tableSizes[len(tableSizes)-1]
}

// ErrExists is returned by [Balancer.AddService] when a service with the
// same name, or the same VIP and protocol, is already configured.
var ErrExists = errors.New("iplb: service already exists")

// ErrNotFound is returned for a service name the balancer does not know.
var ErrNotFound = errors.New("iplb: no such service")

// ErrServerClosed is returned by [Balancer.Serve] when the balancer was
// already served or stopped, and by the other methods once it stopped.
var ErrServerClosed = errors.New("iplb: balancer closed")

// validate checks svc and fills defaults.
func (svc *Service) validate() error {
	if svc.Name == "" || len(svc.Name) > 32 || strings.Trim(svc.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "" {
		return fmt.Errorf("iplb: service name %q: want 1-32 letters, digits, '_' or '-'", svc.Name)
	}
	if !svc.VIP.IsValid() || svc.VIP.Port() == 0 || svc.VIP.Addr().Zone() != "" {
		return fmt.Errorf("iplb: service %s: VIP %v needs an address and a port", svc.Name, svc.VIP)
	}
	svc.VIP = netip.AddrPortFrom(svc.VIP.Addr().Unmap(), svc.VIP.Port())
	if svc.Proto == 0 {
		svc.Proto = TCP
	}
	if svc.Proto != TCP && svc.Proto != UDP {
		return fmt.Errorf("iplb: service %s: protocol %v: want tcp or udp", svc.Name, svc.Proto)
	}
	if svc.Mode > FullNAT {
		return fmt.Errorf("iplb: service %s: unknown %v", svc.Name, svc.Mode)
	}
	if svc.Key.Source > balancer.KeyFlow {
		return fmt.Errorf("iplb: service %s: unknown key source %d", svc.Name, svc.Key.Source)
	}
	if b := svc.Key.Bits4; b < 0 || b > 32 {
		return fmt.Errorf("iplb: service %s: key prefix length %d out of [0, 32]", svc.Name, b)
	}
	if b := svc.Key.Bits6; b < 0 || b > 128 {
		return fmt.Errorf("iplb: service %s: key prefix length %d out of [0, 128]", svc.Name, b)
	}
	if svc.SNAT.IsValid() {
		svc.SNAT = svc.SNAT.Unmap()
		if svc.Mode != FullNAT {
			return fmt.Errorf("iplb: service %s: SNAT needs FullNAT mode", svc.Name)
		}
		if svc.SNAT.Is4() != svc.VIP.Addr().Is4() {
			return fmt.Errorf("iplb: service %s: SNAT %v and VIP %v differ in family", svc.Name, svc.SNAT, svc.VIP)
		}
	}
	if svc.TableSize != 0 && (svc.TableSize < 2 || svc.TableSize > tableSizes[len(tableSizes)-1] || !isPrime(svc.TableSize)) {
		return fmt.Errorf("iplb: service %s: TableSize %d must be a prime up to %d", svc.Name, svc.TableSize, tableSizes[len(tableSizes)-1])
	}
	if svc.Pool == nil {
		return fmt.Errorf("iplb: service %s: nil Pool", svc.Name)
	}
	if svc.Seed == 0 {
		svc.Seed = uint32(balancer.HashString(svc.Name)) | 1
	}
	return nil
}

// checkBackend reports whether addr can serve svc.
func checkBackend(svc *Service, addr netip.AddrPort) error {
	if !addr.IsValid() || addr.Port() == 0 {
		return fmt.Errorf("iplb: service %s: backend %v needs an address and a port", svc.Name, addr)
	}
	if addr.Addr().Unmap().Is4() != svc.VIP.Addr().Is4() {
		return fmt.Errorf("iplb: service %s: backend %v and VIP %v differ in family", svc.Name, addr, svc.VIP)
	}
	return nil
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Config configures a [Balancer]. The zero value is useful.
type Config struct {
	// Services are the virtual services [Balancer.Serve] installs. More
	// can be added, and these changed or removed, at any time.
	Services []Service
	// Table is the name of the inet table the balancer owns. A table of
	// that name found at start is replaced. Empty means "lbkit".
	Table string
	// NetNS is a file descriptor of the network namespace to program (as
	// from netns.Get or an open /var/run/netns file), kept open by the
	// caller while the balancer lives. Zero means the calling process's
	// namespace.
	NetNS int
	// Manual turns the control loop off: pool changes reach the kernel
	// only when the caller calls Sync, which then applies every change
	// made since in one batch per service. The zero value applies each
	// snapshot as it is published.
	Manual bool
	// RetryInterval is how long a service waits before retrying a batch
	// the kernel refused. Zero means 1 s.
	RetryInterval time.Duration
	// Logger receives applied changes at debug level and failures at
	// error level. Nil means slog.Default().
	Logger *slog.Logger
}

// ServiceStats are a service's counters and data-plane state.
type ServiceStats struct {
	// Name, VIP, Proto and Mode repeat the service's configuration.
	Name  string
	VIP   netip.AddrPort
	Proto Proto
	Mode  Mode
	// Flows counts the new flows (conntrack entries) the service's rule
	// steered; Bytes is the size of their first packets.
	Flows, Bytes uint64
	// TableSize is the number of slots in the kernel's map; Version is
	// the pool snapshot version the kernel reflects.
	TableSize int
	Version   uint64
	// Err is the last error applying a snapshot, nil once one succeeds.
	Err error
	// Backends lists every backend with a chain in the kernel: members
	// of the pool, ready or not.
	Backends []BackendStats
}

// BackendStats are one backend's counters within a service.
type BackendStats struct {
	// Addr is the backend's address.
	Addr netip.AddrPort
	// Flows counts the new flows sent to the backend; Bytes the size of
	// their first packets.
	Flows, Bytes uint64
	// Slots is how many slots of the service's map the backend owns: 0
	// while it is unhealthy or draining.
	Slots int
}
