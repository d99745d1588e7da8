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

// AttachMode says how the XDP program is attached to the interface.
type AttachMode uint8

// The attach modes.
const (
	// AttachAuto tries driver (native) mode and falls back to generic.
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
	case AttachDriver:
		return "driver"
	case AttachGeneric:
		return "generic"
	default:
		return "auto"
	}
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
	// Pool holds the service's backends. Its ready set (health, drain,
	// effective weight during slow start) decides the Maglev table; a
	// draining member keeps its established flows.
	Pool *balancer.Pool
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
	// Services are the virtual services, each with its pool. At least
	// one; VIPs (with protocol) must be distinct. The set is fixed for
	// the balancer's life; membership, health and weights change through
	// the pools.
	Services []Service
	// MaxServices sizes the service maps: each service takes RingSize
	// ring slots (256 KiB). Zero means max(16, len(Services)).
	MaxServices int
	// MaxBackends is the number of backend ids, for all services
	// together, including members that left and whose id waits to be
	// reused. Zero means 1024.
	MaxBackends int
	// ConnTableSize is the number of flows the connection table keeps
	// (least recently used go first). Zero means 65536.
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

// Errors returned by [New] and [Balancer.Sync].
var (
	// ErrClosed is returned by methods of a closed Balancer.
	ErrClosed = errors.New("l2lb: balancer closed")
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
	if len(cfg.Services) == 0 {
		return errors.New("l2lb: no services")
	}
	seen := make(map[VIP]bool)
	for i := range cfg.Services {
		s := &cfg.Services[i]
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
		case seen[v]:
			return fmt.Errorf("l2lb: service %v/%v listed twice", s.VIP, s.Proto)
		}
		seen[v] = true
	}
	if cfg.MaxServices == 0 {
		cfg.MaxServices = max(16, len(cfg.Services))
	}
	if cfg.MaxServices < len(cfg.Services) || cfg.MaxServices > (1<<32-1)/RingSize {
		return fmt.Errorf("l2lb: MaxServices %d out of range [%d, %d]", cfg.MaxServices, len(cfg.Services), (1<<32-1)/RingSize)
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
