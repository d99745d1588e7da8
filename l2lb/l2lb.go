package l2lb

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// MetaMAC is the member metadata key (balancer.Backend.Meta) that gives a
// backend's MAC address ("02:00:5e:00:53:01"). A member without it is
// resolved through the neighbour table of the balancer's interface; a
// member whose value does not parse gets no traffic (and is logged).
const MetaMAC = "mac"

// AttachMode says how the XDP program is attached to the interface.
type AttachMode uint8

// The attach modes.
const (
	// AttachAuto uses driver (native) mode where it forwards, falling
	// back to generic: on a veth whose peer runs no XDP program in
	// driver mode it chooses generic at once, because native XDP_TX on
	// such a veth drops every frame it sends (the peer's queue takes
	// XDP frames only while a program runs there); elsewhere it tries
	// driver mode and falls back to generic if the driver refuses.
	AttachAuto AttachMode = iota
	// AttachDriver runs the program in the driver, before the kernel
	// allocates a socket buffer: the fast path, on NICs that support it.
	AttachDriver
	// AttachGeneric runs the program on socket buffers, on any
	// interface. Labs use it: veth's native XDP_TX drops bounced frames
	// unless the peer also runs an XDP program.
	AttachGeneric
)

// String returns "auto", "driver" or "generic".
func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachDriver:
		return "driver"
	case AttachGeneric:
		return "generic"
	default:
		return fmt.Sprintf("attachmode(%d)", uint8(m))
	}
}

// MarshalText returns the mode's name, as String.
func (m AttachMode) MarshalText() ([]byte, error) {
	if m > AttachGeneric {
		return nil, fmt.Errorf("l2lb: unknown %v", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText parses "auto", "driver" or "generic".
func (m *AttachMode) UnmarshalText(text []byte) error {
	switch string(text) {
	case "auto":
		*m = AttachAuto
	case "driver":
		*m = AttachDriver
	case "generic":
		*m = AttachGeneric
	default:
		return fmt.Errorf("l2lb: unknown attach mode %q: want auto, driver or generic", text)
	}
	return nil
}

// Service is one virtual service: frames to VIP with protocol Proto are
// spread over the ready backends of Pool.
//
// The data plane forwards frames unchanged but for the MAC addresses, so
// each backend must listen on the VIP's port; a backend's Addr names the
// host (its address is resolved to a MAC on the balancer's interface) and,
// with its port, identifies it in the pool and for health checks. Backends
// must be on the balancer's link (same L2 segment).
type Service struct {
	// VIP is the virtual address and port clients connect to.
	VIP netip.AddrPort
	// Proto is TCP or UDP. Zero means TCP.
	Proto Protocol
	// Pool holds the service's backends, with their MACs in member
	// metadata (MetaMAC) or from the neighbour table. Its ready set
	// (health, drain, effective weight during slow start) decides the
	// Maglev table; a draining member keeps its established flows. The
	// balancer never closes it. Required.
	Pool *balancer.Pool
	// Key says what picks a new flow's ring slot ([KeyHash]): the zero
	// key and "flow" hash the 5-tuple, so connections spread over the
	// backends; "client" (balancer.KeyClient) hashes the client's
	// address under the key's prefix length (Bits4, Bits6), so every
	// connection of a client, or of a /24, goes to one backend. The
	// program sees frames, not requests: header, cookie, path and query
	// keys fall back to the client's address, as in every front-end that
	// cannot see them. Established flows keep their backend through the
	// connection table whatever the key.
	Key balancer.Key
}

// Config configures a [Balancer].
type Config struct {
	// Interface is the name of the interface the balancer receives VIP
	// traffic on and forwards it out of. Either it or InterfaceIndex is
	// required; they are looked up in the namespace of the thread that
	// calls [New].
	Interface string
	// InterfaceIndex identifies the interface when Interface is empty.
	InterfaceIndex int
	// Mode is the attach mode. Zero means AttachAuto.
	Mode AttachMode
	// Services are the virtual services Serve installs, each with its
	// pool; VIPs (with protocol) must be distinct. Services can be added,
	// changed and removed while serving (Balancer.SetServices and
	// friends); membership, health and weights change through the pools.
	Services []Service
	// MaxServices sizes the service maps: each service takes RingSize
	// ring slots (256 KiB). Zero means max(16, len(Services)).
	MaxServices int
	// MaxBackends is the number of backend ids, for all services
	// together, including members that left and whose id waits to be
	// reused. Zero means 1024.
	MaxBackends int
	// ConnTableSize is the number of flows the connection table keeps;
	// when it is full, a new flow evicts the least recently used one.
	// An evicted flow that is still open picks its backend from the ring
	// again at its next frame: harmless while the ring is unchanged, but
	// after a change of the ready set it may land on another backend,
	// which resets it. Size it to at least the flows that are open at
	// once plus the new flows of the longest idle gap of an open flow
	// (new flows per second × seconds), with headroom: the kernel's LRU
	// may evict a little before the table is full. [Balancer.ConnTable]
	// reports the fill; Counters.ConnLost rising while the pool is
	// unchanged means the table is too small. Zero means 65536.
	ConnTableSize int
	// ResolveInterval is how often the balancer re-reads the
	// interface's neighbour table (picking up MAC changes) and asks the
	// kernel to resolve backends whose MAC is still unknown. A backend
	// without a MAC takes no traffic. Zero means one second.
	ResolveInterval time.Duration
	// Logger receives changes and errors. Nil means slog.Default().
	Logger *slog.Logger
}

// Stats is a snapshot of the data plane's counters.
type Stats struct {
	// Mode is the attach mode in use.
	Mode AttachMode
	Counters
	Services []ServiceStats
}

// ConnTableStats is the connection table's fill.
type ConnTableStats struct {
	// Size is the number of flows the table holds at most
	// (Config.ConnTableSize).
	Size int
	// Entries is the number of flows it holds now.
	Entries int
}

// ServiceStats are one service's counters and backends.
type ServiceStats struct {
	VIP   netip.AddrPort
	Proto Protocol
	// Traffic counts every frame for the service, forwarded or dropped.
	Traffic
	Backends []BackendStats
}

// BackendStats is the data plane's view of one backend.
type BackendStats struct {
	Addr netip.AddrPort
	// MAC is the resolved hardware address, nil while unknown.
	MAC net.HardwareAddr
	// Up reports that the backend takes traffic (new flows if InRing,
	// and established ones); InRing that it owns slots of the Maglev
	// table. Up and not InRing: draining.
	Up, InRing bool
	// Traffic counts the frames forwarded to the backend since it joined.
	Traffic
}

// Backend returns the stats of the backend with address addr, and whether
// there is one.
func (s ServiceStats) Backend(addr netip.AddrPort) (BackendStats, bool) {
	for _, b := range s.Backends {
		if b.Addr == addr {
			return b, true
		}
	}
	return BackendStats{}, false
}

// Errors returned by the [Balancer]'s methods.
var (
	// ErrServerClosed is returned by Serve when the balancer was already
	// served or stopped, and by the other methods once it stopped.
	ErrServerClosed = errors.New("l2lb: balancer closed")
	// ErrNotFound is wrapped by UpdateService and RemoveService for a
	// VIP and protocol the balancer does not serve.
	ErrNotFound = errors.New("l2lb: no such service")
	// ErrUnresolved is wrapped by Sync when ready backends still have no
	// MAC address when its context ends.
	ErrUnresolved = errors.New("l2lb: backend MAC addresses unresolved")
)

// ErrBackendSetup is wrapped by the error of [CheckBackend] when a backend
// is not set up for direct server return.
var ErrBackendSetup = errors.New("l2lb: backend not set up for direct server return")

// SetupError lists what is wrong with a backend's setup, one problem per
// entry, each saying what to change. It wraps [ErrBackendSetup].
type SetupError struct {
	VIP      netip.Addr
	Problems []string
}

// Error lists the problems, one per line.
func (e *SetupError) Error() string {
	return fmt.Sprintf("l2lb: backend not set up for direct server return of %v:\n  - %s", e.VIP, strings.Join(e.Problems, "\n  - "))
}

// Unwrap returns ErrBackendSetup.
func (e *SetupError) Unwrap() error { return ErrBackendSetup }

// validate checks cfg and fills in its defaults.
func validate(cfg *Config) error {
	if cfg.Interface == "" && cfg.InterfaceIndex <= 0 {
		return errors.New("l2lb: Config.Interface or InterfaceIndex is required")
	}
	if cfg.MaxServices == 0 {
		cfg.MaxServices = max(16, len(cfg.Services))
	}
	if cfg.MaxServices < 1 || cfg.MaxServices > (1<<32-1)/RingSize {
		return fmt.Errorf("l2lb: MaxServices %d out of range [1, %d]", cfg.MaxServices, (1<<32-1)/RingSize)
	}
	if err := validateServices(cfg.Services, cfg.MaxServices); err != nil {
		return err
	}
	if cfg.MaxBackends == 0 {
		cfg.MaxBackends = 1024
	}
	if cfg.ConnTableSize == 0 {
		cfg.ConnTableSize = 65536
	}
	if cfg.ResolveInterval == 0 {
		cfg.ResolveInterval = time.Second
	}
	if cfg.MaxBackends < 2 || cfg.ConnTableSize < 1 || cfg.ResolveInterval < 0 {
		return errors.New("l2lb: MaxBackends, ConnTableSize and ResolveInterval must be positive")
	}
	return nil
}

// validateServices checks svcs as one set and fills in their defaults.
func validateServices(svcs []Service, maxServices int) error {
	if len(svcs) > maxServices {
		return fmt.Errorf("l2lb: %d services; MaxServices is %d", len(svcs), maxServices)
	}
	seen := make(map[VIP]bool)
	for i := range svcs {
		s := &svcs[i]
		if s.Proto == 0 {
			s.Proto = TCP
		}
		v := VIP{s.VIP, s.Proto}
		switch {
		case !s.VIP.IsValid() || s.VIP.Port() == 0:
			return fmt.Errorf("l2lb: service %d: invalid VIP %v (address and port required)", i, s.VIP)
		case s.VIP.Addr().Is4In6() || s.VIP.Addr().Zone() != "":
			return fmt.Errorf("l2lb: service %v: use a plain IPv4 or IPv6 address", s.VIP)
		case s.Proto != TCP && s.Proto != UDP:
			return fmt.Errorf("l2lb: service %v: protocol %v is not TCP or UDP", s.VIP, s.Proto)
		case s.Pool == nil:
			return fmt.Errorf("l2lb: service %v/%v: nil Pool", s.VIP, s.Proto)
		case s.Key.Source > balancer.KeyFlow:
			return fmt.Errorf("l2lb: service %v/%v: unknown key source %d", s.VIP, s.Proto, s.Key.Source)
		case s.Key.Bits4 < 0 || s.Key.Bits4 > 32 || s.Key.Bits6 < 0 || s.Key.Bits6 > 128:
			return fmt.Errorf("l2lb: service %v/%v: key %v: prefix length out of range", s.VIP, s.Proto, s.Key)
		case seen[v]:
			return fmt.Errorf("l2lb: service %v/%v listed twice", s.VIP, s.Proto)
		}
		seen[v] = true
	}
	return nil
}
