package l2lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
)

// RingSize is the number of slots of each service's Maglev table in the
// data plane: a prime, equal to maglev.DefaultSize. A flow with hash h
// uses slot h mod RingSize.
const RingSize = 65537

// flowHashSeed starts [FlowHash]; it matches FLOW_HASH_SEED in
// bpf/structs.h.
const flowHashSeed = 0x6c326c62666c6f77

// clientHashSeed starts the client hash of [KeyHash]; it matches
// CLIENT_HASH_SEED in bpf/structs.h.
const clientHashSeed = 0x6c326c62636c6e74

// Protocol is an IP protocol number the data plane balances.
type Protocol = balancer.Proto

// The protocols a [Service] can carry.
const (
	TCP = balancer.TCP
	UDP = balancer.UDP
)

// Verdict is what the XDP program does with a frame. Its values are the
// kernel's XDP action codes.
type Verdict uint32

// The verdicts the program returns.
const (
	// Drop discards the frame: it was for a service with no backend up.
	Drop Verdict = 1
	// Pass hands the frame to the balancer's own network stack: it was
	// not for a virtual service, or not a TCP or UDP frame the program
	// parses.
	Pass Verdict = 2
	// TX sends the frame, its MAC addresses rewritten, back out of the
	// interface it came in on, to the backend.
	TX Verdict = 3
)

// MarshalText returns the verdict's XDP name, as String.
func (v Verdict) MarshalText() ([]byte, error) {
	if v < Drop || v > TX {
		return nil, fmt.Errorf("l2lb: unknown %v", v)
	}
	return []byte(v.String()), nil
}

// UnmarshalText parses "XDP_DROP", "XDP_PASS" or "XDP_TX".
func (v *Verdict) UnmarshalText(text []byte) error {
	for _, c := range []Verdict{Drop, Pass, TX} {
		if c.String() == string(text) {
			*v = c
			return nil
		}
	}
	return fmt.Errorf("l2lb: unknown verdict %q: want XDP_DROP, XDP_PASS or XDP_TX", text)
}

// String returns the verdict's XDP name.
func (v Verdict) String() string {
	switch v {
	case Drop:
		return "XDP_DROP"
	case Pass:
		return "XDP_PASS"
	case TX:
		return "XDP_TX"
	default:
		return fmt.Sprintf("verdict(%d)", uint32(v))
	}
}

// Flow is what the data plane reads from a frame: the 5-tuple and whether
// the segment opens a TCP connection.
type Flow struct {
	Proto    Protocol
	Src, Dst netip.AddrPort
	// SYN reports a TCP segment with SYN set and ACK clear: it always
	// picks from the ring, never from the connection table.
	SYN bool
}

// key returns f in the layout of struct flow_key (bpf/structs.h): the
// flow hash's input.
func (f Flow) key() [40]byte {
	var k [40]byte
	s, d := f.Src.Addr().As16(), f.Dst.Addr().As16()
	copy(k[0:16], s[:])
	copy(k[16:32], d[:])
	binary.BigEndian.PutUint16(k[32:], f.Src.Port())
	binary.BigEndian.PutUint16(k[34:], f.Dst.Port())
	k[36] = uint8(f.Proto)
	k[37] = family(f.Dst.Addr())
	return k
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

// FlowHash returns the hash the data plane computes for f: starting from
// a fixed seed, h = Mix64(h ^ w) for each of the five little-endian 64-bit
// words of the flow key (source and destination addresses in their 16-byte
// form, IPv4 mapped; ports in network byte order; protocol; address
// family 4 or 6; two zero bytes). The seed is a constant so every balancer
// of a fleet hashes a flow alike. It does not allocate.
func FlowHash(f Flow) uint64 {
	k := f.key()
	h := uint64(flowHashSeed)
	for i := 0; i < len(k); i += 8 {
		h = balancer.Mix64(h ^ binary.LittleEndian.Uint64(k[i:]))
	}
	return h
}

// clientMask returns the bits of a client address (in its 16-byte form,
// IPv4 mapped) that key k hashes, as two little-endian words, and
// whether k hashes the client at all. "flow" and no key hash the
// 5-tuple; every other key hashes the client's address under its prefix
// length (the data plane sees frames, not requests, so header, cookie,
// path and query keys fall back to the client, as in every front-end
// that cannot see them). An IPv4 prefix covers the mapped form's first
// 96 bits too.
func clientMask(k balancer.Key, v4 bool) ([2]uint64, bool) {
	if k.Source == balancer.KeyNone || k.Source == balancer.KeyFlow {
		return [2]uint64{}, false
	}
	bits := 128
	if v4 && k.Bits4 > 0 && k.Bits4 < 32 {
		bits = 96 + k.Bits4
	} else if !v4 && k.Bits6 > 0 && k.Bits6 < 128 {
		bits = k.Bits6
	}
	var m [16]byte
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return [2]uint64{binary.LittleEndian.Uint64(m[0:]), binary.LittleEndian.Uint64(m[8:])}, true
}

// KeyHash returns the hash the data plane computes to pick the ring slot
// of a new flow f of a service with key k: [FlowHash] for "flow" and no
// key; for a client key, starting from a fixed seed, h = Mix64(h ^ w)
// for the two little-endian 64-bit words of the client's 16-byte address
// (IPv4 mapped) masked to the key's prefix length. It does not allocate.
func KeyHash(k balancer.Key, f Flow) uint64 {
	mask, client := clientMask(k, f.Dst.Addr().Is4())
	if !client {
		return FlowHash(f)
	}
	a := f.Src.Addr().As16()
	h := uint64(clientHashSeed)
	h = balancer.Mix64(h ^ binary.LittleEndian.Uint64(a[0:])&mask[0])
	return balancer.Mix64(h ^ binary.LittleEndian.Uint64(a[8:])&mask[1])
}

// ParseFlow reads the flow of an Ethernet frame as the XDP program does.
// It reports false for frames the program passes without a lookup: other
// EtherTypes (ARP, VLAN-tagged frames), an IP version that disagrees with
// the EtherType, IPv4 with a header length under 20 bytes, IPv4 fragments,
// IPv6 with extension headers, protocols other than TCP and UDP, and
// frames cut short of the headers it reads. Lengths in the IP headers are
// not checked against the frame: the balancer forwards frames, the
// backend's stack validates them.
func ParseFlow(frame []byte) (Flow, bool) {
	const ethLen = 14
	if len(frame) < ethLen {
		return Flow{}, false
	}
	var (
		f     Flow
		l4    []byte
		proto uint8
	)
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		ip := frame[ethLen:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return Flow{}, false
		}
		ihl := int(ip[0]&0x0f) * 4
		if ihl < 20 {
			return Flow{}, false
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 { // MF or offset
			return Flow{}, false
		}
		proto = ip[9]
		src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		f.Src, f.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		if len(ip) < ihl {
			return Flow{}, false
		}
		l4 = ip[ihl:]
	case 0x86dd:
		ip := frame[ethLen:]
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return Flow{}, false
		}
		proto = ip[6]
		src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		f.Src, f.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		l4 = ip[40:]
	default:
		return Flow{}, false
	}
	switch Protocol(proto) {
	case TCP:
		if len(l4) < 20 {
			return Flow{}, false
		}
		const syn, ack = 0x02, 0x10
		f.SYN = l4[13]&(syn|ack) == syn
	case UDP:
		if len(l4) < 8 {
			return Flow{}, false
		}
	default:
		return Flow{}, false
	}
	f.Proto = Protocol(proto)
	f.Src = netip.AddrPortFrom(f.Src.Addr(), binary.BigEndian.Uint16(l4[0:]))
	f.Dst = netip.AddrPortFrom(f.Dst.Addr(), binary.BigEndian.Uint16(l4[2:]))
	return f, true
}

// Counters are the data plane's global counters. Every frame the program
// sees adds one to exactly one of Passed, Dropped and Forwarded.
type Counters struct {
	Passed      uint64 // passed to the balancer's stack (not for a service, or not parsed)
	Dropped     uint64 // dropped, all causes
	NoBackend   uint64 // dropped because the service had no backend up
	Forwarded   uint64 // rewritten and sent to a backend
	ConnHits    uint64 // forwarded to the backend cached in the connection table
	ConnMisses  uint64 // picked from the ring: no cached backend, or a TCP SYN
	ConnRepicks uint64 // the cached backend was down: picked from the ring again
	// ConnLost counts TCP segments other than a SYN that found no entry
	// in the connection table (and picked from the ring): segments of
	// flows the table evicted when it was full, or of flows older than
	// the program. A steady rise while the pool is unchanged says the
	// table is too small (see Config.ConnTableSize).
	ConnLost uint64
}

// Traffic counts the packets and bytes (whole frames) sent to a service or
// a backend.
type Traffic struct {
	Packets uint64
	Bytes   uint64
}

// CacheResult says how the connection table took part in a decision.
type CacheResult uint8

// The ways a decision can use the connection table.
const (
	// CacheMiss: the flow had no cached backend, or was a TCP SYN.
	CacheMiss CacheResult = iota
	// CacheHit: the cached backend was up and took the frame.
	CacheHit
	// CacheRepick: the cached backend was down; the ring picked again.
	CacheRepick
)

// String returns "miss", "hit" or "repick".
func (c CacheResult) String() string {
	switch c {
	case CacheMiss:
		return "miss"
	case CacheHit:
		return "hit"
	case CacheRepick:
		return "repick"
	default:
		return fmt.Sprintf("cacheresult(%d)", uint8(c))
	}
}

// MarshalText returns the result's name, as String.
func (c CacheResult) MarshalText() ([]byte, error) {
	if c > CacheRepick {
		return nil, fmt.Errorf("l2lb: unknown %v", c)
	}
	return []byte(c.String()), nil
}

// UnmarshalText parses "miss", "hit" or "repick".
func (c *CacheResult) UnmarshalText(text []byte) error {
	for _, r := range []CacheResult{CacheMiss, CacheHit, CacheRepick} {
		if r.String() == string(text) {
			*c = r
			return nil
		}
	}
	return fmt.Errorf("l2lb: unknown cache result %q: want miss, hit or repick", text)
}

// Decision is the model's account of one frame.
type Decision struct {
	Verdict Verdict
	// Service and Backend are the ids the program used (Backend is 0
	// unless Verdict is TX).
	Service, Backend uint32
	// Slot is the ring slot the flow hashes to (set when the frame was
	// for a service; see KeyHash).
	Slot  uint32
	Cache CacheResult
}

// BackendEntry is the data plane's record of one backend id.
type BackendEntry struct {
	MAC [6]byte
	// Up means the backend takes traffic: new flows through the ring,
	// and cached flows. A drained backend is up but out of the ring.
	Up bool
	// Service is the id of the service the backend belongs to; a cached
	// flow whose backend id now belongs to another service picks again.
	Service uint32
}

// VIP identifies a virtual service: the destination address, port and
// protocol of its frames.
type VIP struct {
	Addr  netip.AddrPort
	Proto Protocol
}

// Model is a pure-Go model of the XDP program's decisions over the same
// state as its maps: services, rings, backends, the balancer's MAC and the
// connection table (unbounded: the model never evicts, the kernel's LRU
// table does when full). Fed the same state and frames, it picks the same
// backend and counts the same, which is how the tests check the program.
// It also answers "where does this flow go" without a kernel.
//
// The zero value is not ready; use [NewModel]. A Model is not safe for
// concurrent use.
type Model struct {
	mac      [6]byte
	services map[VIP]uint32
	keys     map[uint32]balancer.Key
	rings    map[uint32][]uint32
	backends map[uint32]BackendEntry
	conns    map[connKey]uint32

	// Counters are the global counters, as the program keeps them.
	Counters Counters
	// ServiceTraffic and BackendTraffic count by service and backend id.
	ServiceTraffic map[uint32]Traffic
	BackendTraffic map[uint32]Traffic
}

// NewModel returns a model of a balancer whose interface has the MAC mac,
// with no services.
func NewModel(mac [6]byte) *Model {
	return &Model{
		mac:            mac,
		services:       make(map[VIP]uint32),
		keys:           make(map[uint32]balancer.Key),
		rings:          make(map[uint32][]uint32),
		backends:       make(map[uint32]BackendEntry),
		conns:          make(map[connKey]uint32),
		ServiceTraffic: make(map[uint32]Traffic),
		BackendTraffic: make(map[uint32]Traffic),
	}
}

// SetService maps v to service id (see [Model.SetSlots] for its ring).
func (m *Model) SetService(v VIP, id uint32) { m.services[v] = id }

// SetKey sets the key that service id picks new flows by (see
// [KeyHash]). A service without one hashes the 5-tuple.
func (m *Model) SetKey(service uint32, k balancer.Key) { m.keys[service] = k }

// DeleteService removes v.
func (m *Model) DeleteService(v VIP) { delete(m.services, v) }

// SetSlots sets ring slot slots[i] of service id to backend id ids[i]. A
// slot never set holds 0, the reserved id that is never up.
func (m *Model) SetSlots(service uint32, slots []int, ids []uint32) {
	r := m.rings[service]
	if r == nil {
		r = make([]uint32, RingSize)
		m.rings[service] = r
	}
	for i, s := range slots {
		r[s] = ids[i]
	}
}

// SetBackend sets the entry of backend id.
func (m *Model) SetBackend(id uint32, e BackendEntry) { m.backends[id] = e }

// Backend returns the entry of backend id (the zero entry if never set).
func (m *Model) Backend(id uint32) BackendEntry { return m.backends[id] }

// connKey is the connection table's key, as struct conn_key in
// bpf/structs.h: the client's address (16-byte form) and port, and the
// service id, which stands for the destination address, port and
// protocol.
type connKey struct {
	src     [16]byte
	port    uint16
	service uint32
}

// backendOK mirrors backend_ok in bpf/l2lb.c.
func (m *Model) backendOK(id, service uint32) (BackendEntry, bool) {
	e, ok := m.backends[id]
	return e, ok && e.Up && e.Service == service
}

// Decide returns the program's decision for a frame of flow f of length
// size bytes, and updates the connection table and counters as the
// program does.
func (m *Model) Decide(f Flow, size int) Decision {
	sid, ok := m.services[VIP{f.Dst, f.Proto}]
	if !ok {
		m.Counters.Passed++
		return Decision{Verdict: Pass}
	}
	n := uint64(size)
	add(m.ServiceTraffic, sid, n)
	d := Decision{Service: sid, Slot: uint32(KeyHash(m.keys[sid], f) % RingSize)}
	k := connKey{f.Src.Addr().As16(), f.Src.Port(), sid}
	var id uint32
	found := false
	if !(f.Proto == TCP && f.SYN) {
		if cached, hit := m.conns[k]; hit {
			id = cached
			if _, found = m.backendOK(id, sid); found {
				d.Cache = CacheHit
				m.Counters.ConnHits++
			} else {
				d.Cache = CacheRepick
				m.Counters.ConnRepicks++
			}
		} else {
			m.Counters.ConnMisses++
			if f.Proto == TCP {
				m.Counters.ConnLost++
			}
		}
	} else {
		m.Counters.ConnMisses++
	}
	if !found {
		id = 0
		if r := m.rings[sid]; r != nil {
			id = r[d.Slot]
		}
		if _, found = m.backendOK(id, sid); !found {
			m.Counters.NoBackend++
			m.Counters.Dropped++
			d.Verdict = Drop
			return d
		}
		m.conns[k] = id
	}
	add(m.BackendTraffic, id, n)
	m.Counters.Forwarded++
	d.Verdict, d.Backend = TX, id
	return d
}

func add(m map[uint32]Traffic, id uint32, bytes uint64) {
	t := m[id]
	t.Packets++
	t.Bytes += bytes
	m[id] = t
}

// Process runs frame through the model: it parses the frame as the
// program does, decides, and returns the decision and the frame the
// program would send (a rewritten copy for TX: destination MAC the
// backend's, source MAC the balancer's; frame itself otherwise).
func (m *Model) Process(frame []byte) (Decision, []byte) {
	f, ok := ParseFlow(frame)
	if !ok {
		m.Counters.Passed++
		return Decision{Verdict: Pass}, frame
	}
	d := m.Decide(f, len(frame))
	if d.Verdict != TX {
		return d, frame
	}
	out := append([]byte(nil), frame...)
	be := m.backends[d.Backend]
	copy(out[0:6], be.MAC[:])
	copy(out[6:12], m.mac[:])
	return d, out
}
