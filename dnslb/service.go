package dnslb

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of service answers when Service.TTL is zero:
// short, so clients move off a failed backend quickly.
const DefaultTTL = 30 * time.Second

// MetaName is the member metadata key (balancer.Backend.Meta) whose value,
// a host name such as "web1.example.test.", is the member's SRV target.
// Without it the target is a name synthesized under the service (see
// [Service]).
const MetaName = "name"

// DefaultKey is the key of PolicyConsistent when Service.Key is zero: the
// client's /24 (IPv4) or /56 (IPv6), the prefixes resolvers and EDNS
// Client Subnet commonly use.
var DefaultKey = balancer.Key{Source: balancer.KeyClient, Bits4: 24, Bits6: 56}

// Policy says which of a service's ready backends an answer names.
type Policy uint8

const (
	// PolicyAll answers every ready backend, rotated by one position per
	// query so clients that take the first address spread evenly.
	PolicyAll Policy = iota
	// PolicyWeighted answers Count backends, the first chosen by the
	// pool's picker without a key: the pool's policy (weighted round
	// robin, random, least connections, ...) decides who is named first,
	// as it decides who gets a request behind a proxy. The others are the
	// ready backends after it, without repetition (one pick per answer
	// keeps the policy's own sequence intact).
	PolicyWeighted
	// PolicyConsistent answers, for one client subnet, the same Count
	// backends while they stay ready: the pool's picker is asked with
	// Service.Key of the client subnet (the EDNS Client Subnet prefix
	// when the query has one, else the source address), and for more
	// names with keys derived from it. Use a hash-based builder (Maglev,
	// ring hash, rendezvous) for the pool, or answers are not sticky.
	PolicyConsistent
	// PolicyNearest answers the ready backends whose Zone is the one the
	// client subnet maps to through Service.Zones (longest prefix wins),
	// rotated, up to Count; when that zone has none ready, or no rule
	// matches, it answers from every zone.
	PolicyNearest
)

var policyNames = [...]string{PolicyAll: "all", PolicyWeighted: "weighted", PolicyConsistent: "consistent", PolicyNearest: "nearest"}

// String returns the policy's name as a configuration file spells it:
// "all", "weighted", "consistent" or "nearest".
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText returns the policy's name. It fails for an unknown policy.
// It implements encoding.TextMarshaler.
func (p Policy) MarshalText() ([]byte, error) {
	if int(p) >= len(policyNames) {
		return nil, fmt.Errorf("dnslb: unknown policy %d", p)
	}
	return []byte(policyNames[p]), nil
}

// UnmarshalText sets p from its name (see [Policy.String]), ignoring
// case. It implements encoding.TextUnmarshaler.
func (p *Policy) UnmarshalText(text []byte) error {
	for i, n := range policyNames {
		if strings.EqualFold(n, string(text)) {
			*p = Policy(i)
			return nil
		}
	}
	return fmt.Errorf("dnslb: unknown policy %q (want all, weighted, consistent or nearest)", text)
}

// Fallback says what a service answers when none of its backends of the
// asked address family is ready.
type Fallback uint8

const (
	// FallbackAll answers every member that is not draining, healthy or
	// not (panic mode, as Route 53 does when all records are unhealthy):
	// a broken health check then costs nothing, and clients still try.
	// When every member is draining the answer is SERVFAIL.
	FallbackAll Fallback = iota
	// FallbackServFail answers SERVFAIL.
	FallbackServFail
)

var fallbackNames = [...]string{FallbackAll: "all", FallbackServFail: "servfail"}

// String returns the fallback's name as a configuration file spells it:
// "all" or "servfail".
func (f Fallback) String() string {
	if int(f) < len(fallbackNames) {
		return fallbackNames[f]
	}
	return "Fallback(" + strconv.Itoa(int(f)) + ")"
}

// MarshalText returns the fallback's name. It fails for an unknown
// fallback. It implements encoding.TextMarshaler.
func (f Fallback) MarshalText() ([]byte, error) {
	if int(f) >= len(fallbackNames) {
		return nil, fmt.Errorf("dnslb: unknown fallback %d", f)
	}
	return []byte(fallbackNames[f]), nil
}

// UnmarshalText sets f from its name (see [Fallback.String]), ignoring
// case. It implements encoding.TextUnmarshaler.
func (f *Fallback) UnmarshalText(text []byte) error {
	for i, n := range fallbackNames {
		if strings.EqualFold(n, string(text)) {
			*f = Fallback(i)
			return nil
		}
	}
	return fmt.Errorf("dnslb: unknown fallback %q (want all or servfail)", text)
}

// ZoneRule maps client addresses to a backend zone for [PolicyNearest].
type ZoneRule struct {
	// Prefix is the client network the rule covers.
	Prefix netip.Prefix
	// Zone is the balancer.Backend Zone to answer from.
	Zone string
}

// Service is a name served from a pool: A and AAAA queries answer the
// addresses of its ready backends, SRV queries answer one record per ready
// backend (priority 0, weight from the effective weight, the backend's
// port) whose target is the member's [MetaName] metadata when set (the
// name must then resolve by other means, such as the zone data), else a
// host name under the service, "ip4-198-18-0-1.<name>" or
// "ip6-<32 hex digits>.<name>", which itself answers that backend's
// address (and is sent as glue).
type Service struct {
	// Name is the service's fully qualified name, inside one of the
	// server's zones, such as "www.example.test.".
	Name string
	// Pool supplies the backends. Required. Answers follow its current
	// Snapshot's Ready set, so health, drain, weights and slow start
	// apply.
	Pool *balancer.Pool
	// Policy chooses the backends an answer names. The zero value is
	// PolicyAll.
	Policy Policy
	// Key derives the pick key from the client's address (or its EDNS
	// Client Subnet) for PolicyConsistent: client addresses under the
	// key's prefix lengths share an answer, and ECS answers are scoped to
	// at most those lengths. Keys that read HTTP data (header, cookie,
	// path, query) or the 5-tuple fall back to the client address in
	// DNS. The zero value means DefaultKey (client/24,56). Other policies
	// ignore it.
	Key balancer.Key
	// Count is how many addresses an answer names: for PolicyWeighted and
	// PolicyConsistent zero means 1; for PolicyNearest zero means every
	// ready backend of the zone. PolicyAll ignores it.
	Count int
	// TTL is the answers' TTL, in whole seconds. Zero means DefaultTTL.
	TTL time.Duration
	// Zones maps client subnets to backend zones for PolicyNearest.
	Zones []ZoneRule
	// Fallback says what to answer when no backend of the asked family is
	// ready. The zero value is FallbackAll.
	Fallback Fallback
	// UpdatePort opens the service to RFC 2136 UPDATEs signed with one of
	// Config.UpdateKeys: addresses added at its name join Pool as backends
	// with this port (A and AAAA records carry none). Zero refuses
	// updates to the service.
	UpdatePort uint16
}

// service is a compiled Service plus the current answer state, rebuilt
// when the pool publishes a new snapshot.
type service struct {
	cfg   Service
	name  []byte // lower-case wire form
	ttl   uint32
	count int
	key   balancer.Key // Key, or DefaultKey
	rules []rule       // longest prefix first

	mu  sync.Mutex
	cur atomic.Pointer[svcState]
}

type rule struct {
	prefix netip.Prefix
	zone   string
}

// svcState is an immutable view of a service built from one pool
// snapshot: the records of each address family pre-packed for the answer
// section, the SRV answer, and the lookup tables the policies use.
type svcState struct {
	snap  *balancer.Snapshot
	fam   [2]famSet // 0: IPv4 (A), 1: IPv6 (AAAA)
	refs  map[*balancer.Endpoint]int32
	srv   []byte // SRV answer records
	srvN  int
	glue  []byte // A/AAAA records of the SRV targets
	glueN int
	hosts map[string]hostRef // target label → record
	sigs  sigMap             // signed answers of this snapshot (DNSSEC)
	nsec  sigSlot            // signed NSEC of the service name
}

type hostRef struct {
	fam int
	idx int32
}

// famSet holds the answer records of one address family, each stride
// bytes long: compression pointer to the question, header, address.
type famSet struct {
	wire     []byte
	stride   int
	n        int
	fallback bool // records of members that are not ready: picks skip
	servfail bool
	byRule   [][]int32 // per service rule: indices of records in its zone
}

// compileService validates s.
func compileService(s Service) (*service, error) {
	if s.Pool == nil {
		return nil, fmt.Errorf("dnslb: service %q: Pool is required", s.Name)
	}
	name := dns.CanonicalName(dns.Fqdn(s.Name))
	if _, ok := dns.IsDomainName(name); !ok || s.Name == "" {
		return nil, fmt.Errorf("dnslb: invalid service name %q", s.Name)
	}
	w, err := wireName(name)
	if err != nil {
		return nil, err
	}
	if s.Policy > PolicyNearest {
		return nil, fmt.Errorf("dnslb: service %q: unknown policy %d", name, s.Policy)
	}
	if s.Fallback > FallbackServFail {
		return nil, fmt.Errorf("dnslb: service %q: unknown fallback %d", name, s.Fallback)
	}
	if k := s.Key; k.Bits4 < 0 || k.Bits4 > 32 || k.Bits6 < 0 || k.Bits6 > 128 {
		return nil, fmt.Errorf("dnslb: service %q: Key %s: prefix lengths out of range", name, k)
	}
	if s.Count < 0 {
		return nil, fmt.Errorf("dnslb: service %q: Count must not be negative", name)
	}
	if s.TTL < 0 || s.TTL > math.MaxInt32*time.Second {
		return nil, fmt.Errorf("dnslb: service %q: TTL %v out of range", name, s.TTL)
	}
	ttl := s.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	count := s.Count
	if count == 0 && s.Policy != PolicyNearest {
		count = 1
	}
	sv := &service{cfg: s, name: w, ttl: uint32(ttl / time.Second), count: count, key: s.Key}
	if sv.key.IsZero() {
		sv.key = DefaultKey
	}
	for _, r := range s.Zones {
		if !r.Prefix.IsValid() {
			return nil, fmt.Errorf("dnslb: service %q: invalid zone rule prefix", name)
		}
		sv.rules = append(sv.rules, rule{prefix: r.Prefix.Masked(), zone: r.Zone})
	}
	slices.SortStableFunc(sv.rules, func(a, b rule) int { return b.prefix.Bits() - a.prefix.Bits() })
	return sv, nil
}

// state returns the answer state for the pool's current snapshot,
// rebuilding it first if the snapshot changed. The common case is two
// atomic loads.
func (sv *service) state() *svcState {
	snap := sv.cfg.Pool.Snapshot()
	if st := sv.cur.Load(); st != nil && st.snap == snap {
		return st
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	snap = sv.cfg.Pool.Snapshot()
	if st := sv.cur.Load(); st != nil && st.snap == snap {
		return st
	}
	st := sv.build(snap)
	sv.cur.Store(st)
	return st
}

func famOf(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

// build packs the answers for snap.
func (sv *service) build(snap *balancer.Snapshot) *svcState {
	st := &svcState{snap: snap, refs: make(map[*balancer.Endpoint]int32), hosts: make(map[string]hostRef)}
	var byFam [2][]balancer.Weighted
	for _, w := range snap.Ready {
		f := famOf(w.Endpoint.Addr().Addr())
		byFam[f] = append(byFam[f], w)
	}
	// A fallback answers from every member: the snapshot lists them, and
	// the pool publishes a new one whenever any member changes.
	members := snap.Members
	for f := range byFam {
		fs := &st.fam[f]
		fs.stride = 16
		if f == 1 {
			fs.stride = 28
		}
		list := byFam[f]
		if len(list) == 0 {
			var any bool
			for _, ep := range members {
				if famOf(ep.Addr().Addr()) != f {
					continue
				}
				any = true
				if !ep.Draining() {
					list = append(list, balancer.Weighted{Endpoint: ep, Weight: float64(ep.Weight())})
				}
			}
			if any && (len(list) == 0 || sv.cfg.Fallback == FallbackServFail) {
				fs.servfail = true
				list = nil
			}
			byFam[f] = list
			fs.fallback = true
		}
		fs.byRule = make([][]int32, len(sv.rules))
		seen := make(map[netip.Addr]int32)
		for _, w := range list {
			a := w.Endpoint.Addr().Addr().Unmap()
			if i, dup := seen[a]; dup {
				st.refs[w.Endpoint] = i
				continue
			}
			i := int32(fs.n)
			seen[a] = i
			st.refs[w.Endpoint] = i
			fs.n++
			typ := uint16(typeA)
			if f == 1 {
				typ = typeAAAA
			}
			fs.wire = append(fs.wire, 0xC0, headerLen)
			fs.wire = appendRRHeader(fs.wire, typ, sv.ttl, len(a.AsSlice()))
			fs.wire = append(fs.wire, a.AsSlice()...)
			for r, ru := range sv.rules {
				if ru.zone == w.Endpoint.Zone() {
					fs.byRule[r] = append(fs.byRule[r], i)
				}
			}
			st.hosts[hostLabel(a)] = hostRef{fam: f, idx: i}
		}
	}
	// SRV: one record per backend (every port), targets with glue
	// (synthesized names only: a MetaName target resolves elsewhere).
	glued := make(map[netip.Addr]bool)
	for f := range byFam {
		for _, w := range byFam[f] {
			a := w.Endpoint.Addr().Addr().Unmap()
			target := metaTarget(w.Endpoint)
			named := target != nil
			if !named {
				target = append([]byte{}, hostLabel(a)...)
				target = append([]byte{byte(len(target))}, target...)
				target = append(target, sv.name...)
			}
			weight := uint16(min(max(math.Round(w.Weight*10), 1), math.MaxUint16))
			st.srv = append(st.srv, 0xC0, headerLen)
			st.srv = appendRRHeader(st.srv, typeSRV, sv.ttl, 6+len(target))
			port := w.Endpoint.Addr().Port()
			st.srv = append(st.srv, 0, 0, byte(weight>>8), byte(weight), byte(port>>8), byte(port))
			st.srv = append(st.srv, target...)
			st.srvN++
			if !named && !glued[a] {
				glued[a] = true
				typ := uint16(typeA)
				if f == 1 {
					typ = typeAAAA
				}
				st.glue = append(st.glue, target...)
				st.glue = appendRRHeader(st.glue, typ, sv.ttl, len(a.AsSlice()))
				st.glue = append(st.glue, a.AsSlice()...)
				st.glueN++
			}
		}
	}
	return st
}

// metaTarget returns the wire form of the member's MetaName, or nil when
// it has none or it is not a valid name.
func metaTarget(ep *balancer.Endpoint) []byte {
	name := ep.Meta(MetaName)
	if name == "" {
		return nil
	}
	name = dns.Fqdn(name)
	if _, ok := dns.IsDomainName(name); !ok {
		return nil
	}
	w, err := wireName(name)
	if err != nil {
		return nil
	}
	return w
}

// hostLabel returns the SRV target label of an address: "ip4-198-18-0-1"
// or "ip6-" and 32 hex digits.
func hostLabel(a netip.Addr) string {
	if a.Is4() {
		return "ip4-" + strings.ReplaceAll(a.String(), ".", "-")
	}
	b := a.As16()
	return "ip6-" + hex.EncodeToString(b[:])
}

// clientSubnet returns the client network a policy keys on: the EDNS
// Client Subnet prefix when the query carried one with a nonzero source
// prefix, else the source address. fromECS reports which.
func clientSubnet(q *query, src netip.Addr) (addr netip.Addr, nbits int, fromECS bool) {
	if q.ecs && q.ecsSrc > 0 {
		if q.ecsFam == 1 {
			return netip.AddrFrom4([4]byte(q.ecsAddr[:4])), int(q.ecsSrc), true
		}
		return netip.AddrFrom16(q.ecsAddr), int(q.ecsSrc), true
	}
	src = src.Unmap()
	return src, src.BitLen(), false
}

// nearest returns the index of the longest rule containing addr (-1 if
// none) and the ECS scope for which that choice holds: the matched length,
// raised to exclude any more specific rule inside the matched network that
// addr is not in (so a resolver caching the answer for the scope never
// hands it to a client a different rule covers).
func (sv *service) nearest(addr netip.Addr) (int, uint8) {
	idx, l := -1, 0
	for i, r := range sv.rules {
		if r.prefix.Addr().Is4() == addr.Is4() && r.prefix.Contains(addr) {
			idx, l = i, r.prefix.Bits()
			break
		}
	}
	scope := l
	for _, r := range sv.rules {
		if r.prefix.Bits() <= l {
			break
		}
		if r.prefix.Addr().Is4() != addr.Is4() {
			continue
		}
		if c := commonBits(addr, r.prefix.Addr()); c >= l {
			scope = max(scope, min(c+1, r.prefix.Bits()))
		}
	}
	return idx, uint8(scope)
}

// commonBits returns the length of the common prefix of a and b, which
// are of the same family.
func commonBits(a, b netip.Addr) int {
	if a.Is4() {
		x, y := a.As4(), b.As4()
		return bits.LeadingZeros32(be32(x[:]) ^ be32(y[:]))
	}
	x, y := a.As16(), b.As16()
	if h := be64(x[:8]) ^ be64(y[:8]); h != 0 {
		return bits.LeadingZeros64(h)
	}
	return 64 + bits.LeadingZeros64(be64(x[8:])^be64(y[8:]))
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
func be64(b []byte) uint64 { return uint64(be32(b))<<32 | uint64(be32(b[4:])) }

// jump is Lamping and Veach's jump consistent hash: a bucket in [0, n)
// for key that moves for only 1/n of keys when n grows by one.
func jump(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}
