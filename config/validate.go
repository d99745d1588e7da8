package config

import (
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// maxTableSize bounds the lookup tables a file may ask for (4 bytes a slot
// and more per policy): a typo must not cost gigabytes.
const maxTableSize = 1 << 26

// maxFileSize bounds the files a configuration names (keys, tokens, zone
// files): they are small, and a name such as /dev/zero must not hang Load.
const maxFileSize = 4 << 20

// posOf returns where the first of ptrs that the decoder saw was declared:
// callers pass the field first and the struct holding it after, so a
// missing field is reported at its struct.
func (d *decoder) posOf(ptrs ...any) Position {
	for _, p := range ptrs {
		if pos, ok := d.pos[p]; ok {
			return pos
		}
	}
	return Position{File: d.file, Line: 1, Column: 1}
}

// errAt reports a problem at the first of ptrs the decoder saw, unless
// decoding already reported a problem there: a value that failed to decode
// is left zero, and "x is required" would only echo the first report.
func (d *decoder) errAt(ptrs []any, format string, args ...any) {
	p := d.posOf(ptrs...)
	if d.decodeErrs[p] {
		return
	}
	d.errs = append(d.errs, &Error{Position: p, Msg: fmt.Sprintf(format, args...)})
}

// at2 is shorthand for the common "this field, else its struct" list.
func at2(field, parent any) []any { return []any{field, parent} }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validate checks what the decoder cannot: required fields, ranges, names
// that must exist or be unique, addresses, files. It fills in the contents
// of the files the configuration names.
func (d *decoder) validate(c *Config) {
	d.admin(c)
	if al := &c.AccessLog; al.Path != "" && al.Path != "stdout" && al.Path != "stderr" {
		dir := filepath.Dir(d.path(al.Path))
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			d.errAt(at2(&al.Path, al), "path: directory %s does not exist", dir)
		}
	}

	pools := map[string]*Pool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		d.pool(p)
		if p.Name == "" {
			continue
		}
		if first, ok := pools[p.Name]; ok {
			d.errAt(at2(&p.Name, p), "duplicate pool %q: first declared at line %d", p.Name, d.posOf(&first.Name).Line)
			continue
		}
		pools[p.Name] = p
	}

	names := map[string]*Listener{}
	var claims []claim
	if ap, err := parseListenAddr(c.Admin.Addr); err == nil && ap.Port() != 0 {
		claims = append(claims, claim{text: c.Admin.Addr, proto: "tcp", ap: ap, who: "the admin endpoint", at: d.posOf(&c.Admin.Addr, &c.Admin)})
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		d.listenerChecks(l, pools)
		if l.Name != "" {
			if first, ok := names[l.Name]; ok {
				d.errAt(at2(&l.Name, l), "duplicate listener %q: first declared at line %d", l.Name, d.posOf(&first.Name).Line)
			} else {
				names[l.Name] = l
			}
		}
		for _, cl := range d.claims(l) {
			for _, o := range claims {
				if o.conflicts(cl) {
					d.errs = append(d.errs, &Error{Position: cl.at, Msg: fmt.Sprintf(
						"listener address used twice: %s/%s is also used by %s (line %d)", cl.text, cl.proto, o.who, o.at.Line)})
					break
				}
			}
			claims = append(claims, cl)
		}
	}
}

func (d *decoder) admin(c *Config) {
	a := &c.Admin
	if a.Addr == "" {
		a.Addr = DefaultAdminAddr
	}
	ap, err := parseListenAddr(a.Addr)
	if err != nil {
		d.errAt(at2(&a.Addr, a), "addr: bad address %q: %v", a.Addr, err)
	}
	if a.TokenFile != "" {
		if b, ok := d.readFile(&a.TokenFile, a, "token_file"); ok {
			a.Token = strings.TrimSpace(string(b))
			if a.Token == "" {
				d.errAt(at2(&a.TokenFile, a), "token_file: %s is empty", a.TokenFile)
			}
		}
	} else if err == nil && !isLoopback(a.Addr, ap) {
		d.errAt(at2(&a.Addr, a), "addr: admin endpoint on %s is not loopback-only: set token_file, or bind to 127.0.0.1", a.Addr)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.AccessLog.Format == "" {
		c.AccessLog.Format = LogJSON
	}
}

// path resolves a file name against the configuration file's directory.
func (d *decoder) path(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(d.dir, name)
}

// readFile reads the file *name names, relative to the configuration's
// directory, reporting problems at the field.
func (d *decoder) readFile(name *string, parent any, field string) ([]byte, bool) {
	p := d.path(*name)
	// Stat before opening: opening a FIFO would block.
	st, err := os.Stat(p)
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("not a regular file")
	}
	var f *os.File
	if err == nil {
		if f, err = os.Open(p); err == nil {
			defer f.Close()
		}
	}
	if err != nil {
		d.errAt(at2(name, parent), "%s: cannot read %s: %v", field, p, unwrapPath(err))
		return nil, false
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err == nil && len(b) > maxFileSize {
		err = fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	if err != nil {
		d.errAt(at2(name, parent), "%s: cannot read %s: %v", field, p, unwrapPath(err))
		return nil, false
	}
	return b, true
}

// unwrapPath drops the path an *os.PathError repeats.
func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// parseListenAddr parses a listening address: host:port where host is an
// IP address, "localhost" (read as 127.0.0.1) or empty (every address, read
// as the IPv6 unspecified address).
func parseListenAddr(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("expected host:port, such as 127.0.0.1:8080 or :8080")
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: expected a number from 0 to 65535", port)
	}
	var a netip.Addr
	switch host {
	case "":
		a = netip.IPv6Unspecified()
	case "localhost":
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	default:
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("host %q: expected an IP address, localhost or nothing", host)
		}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(pn)), nil
}

func isLoopback(s string, ap netip.AddrPort) bool {
	host, _, _ := net.SplitHostPort(s)
	return host != "" && ap.Addr().IsLoopback()
}

// claim is a listening address with a protocol, to find two listeners on
// one address.
type claim struct {
	text   string // as written
	kernel bool   // an iplb or l2lb VIP, not a socket
	proto  string
	ap     netip.AddrPort
	who    string
	at     Position
}

// conflicts reports whether two claims take the same traffic: the same
// port and protocol, and the same address, or for two sockets an
// unspecified address on either side (a wildcard bind takes the port on
// every address). A kernel VIP takes its packets before any socket sees
// them, so it conflicts with a socket on the VIP itself, not with a
// wildcard one.
func (c claim) conflicts(o claim) bool {
	if c.proto != o.proto || c.ap.Port() != o.ap.Port() {
		return false
	}
	a, b := c.ap.Addr(), o.ap.Addr()
	if a == b {
		return true
	}
	return !c.kernel && !o.kernel && (a.IsUnspecified() || b.IsUnspecified())
}

func (d *decoder) claims(l *Listener) []claim {
	who := fmt.Sprintf("listener %q", l.Name)
	var out []claim
	kernel := l.Type == TypeIPLB || l.Type == TypeL2LB
	add := func(text, proto string, ap netip.AddrPort, ptrs ...any) {
		if ap.Port() != 0 {
			out = append(out, claim{text: text, kernel: kernel, proto: proto, ap: ap, who: who, at: d.posOf(ptrs...)})
		}
	}
	switch l.Type {
	case TypeRedirect, TypeHTTP, TypeTCP, TypeDNS:
		ap, err := parseListenAddr(l.Addr)
		if l.Addr == "" || err != nil {
			return nil
		}
		add(l.Addr, "tcp", ap, &l.Addr, l)
		if l.Type == TypeDNS {
			add(l.Addr, "udp", ap, &l.Addr, l)
		}
	case TypeIPLB:
		if a, err := netip.ParseAddr(l.IPLB.VIP); err == nil && l.IPLB.Port > 0 && l.IPLB.Port <= math.MaxUint16 {
			ap := netip.AddrPortFrom(a.Unmap(), uint16(l.IPLB.Port))
			add(ap.String(), string(orProto(l.IPLB.Proto)), ap, &l.IPLB.VIP, l)
		}
	case TypeL2LB:
		for i := range l.L2LB.VIPs {
			v := &l.L2LB.VIPs[i]
			if a, err := netip.ParseAddr(v.VIP); err == nil && v.Port > 0 && v.Port <= math.MaxUint16 {
				ap := netip.AddrPortFrom(a.Unmap(), uint16(v.Port))
				add(ap.String(), string(orProto(v.Proto)), ap, &v.VIP, v)
			}
		}
	}
	return out
}

func orProto(p Proto) Proto {
	if p == "" {
		return ProtoTCP
	}
	return p
}

// article returns "a tcp" or "an http": a listener type with its article.
func article(t ListenerType) string {
	if t == TypeHTTP || t == TypeIPLB || t == TypeL2LB {
		return "an " + string(t)
	}
	return "a " + string(t)
}

// policyOption is a pool field that only some policies read.
type policyOption struct {
	name     string
	set      func(p *Pool) (any, bool)
	policies []Policy
}

var policyOptions = []policyOption{
	{"table_size", func(p *Pool) (any, bool) { return &p.TableSize, p.TableSize != 0 }, []Policy{PolicyMaglev, PolicySourceHash}},
	{"hash_type", func(p *Pool) (any, bool) { return &p.HashType, p.HashType != "" }, []Policy{PolicySourceHash}},
	{"points_per_weight", func(p *Pool) (any, bool) { return &p.PointsPerWeight, p.PointsPerWeight != 0 }, []Policy{PolicyRingHash}},
	{"min_ring_size", func(p *Pool) (any, bool) { return &p.MinRingSize, p.MinRingSize != 0 }, []Policy{PolicyRingHash}},
	{"max_ring_size", func(p *Pool) (any, bool) { return &p.MaxRingSize, p.MaxRingSize != 0 }, []Policy{PolicyRingHash}},
	{"load_factor", func(p *Pool) (any, bool) { return &p.LoadFactor, p.LoadFactor != 0 }, []Policy{PolicyRingHash}},
	{"scan_limit", func(p *Pool) (any, bool) { return &p.ScanLimit, p.ScanLimit != 0 }, []Policy{PolicyLeastConn}},
	{"key", func(p *Pool) (any, bool) { return &p.Key, !p.Key.IsZero() }, []Policy{PolicyMaglev, PolicyRingHash, PolicyRendezvous, PolicySourceHash}},
}

func policyList(ps []Policy) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}

func (d *decoder) pool(p *Pool) {
	switch {
	case p.Name == "":
		d.errAt(at2(&p.Name, p), "a pool needs a name")
	case !nameRE.MatchString(p.Name):
		d.errAt(at2(&p.Name, p), "name %q: expected letters, digits, '.', '_' and '-' (at most 63)", p.Name)
	}
	if p.Policy == "" {
		p.Policy = PolicyRoundRobin
	}
	for _, o := range policyOptions {
		if ptr, set := o.set(p); set && !slices.Contains(o.policies, p.Policy) {
			d.errAt(at2(ptr, p), "%s has no effect with policy %s; it applies to %s", o.name, p.Policy, policyList(o.policies))
		}
	}
	if p.TableSize != 0 && (p.TableSize < 0 || p.TableSize > maxTableSize || !isPrime(p.TableSize)) {
		d.errAt(at2(&p.TableSize, p), "table_size: %d is not a prime from 2 to %d (65537 and 262139 are)", p.TableSize, maxTableSize)
	} else if p.TableSize != 0 && p.TableSize <= len(p.Members) {
		d.errAt(at2(&p.TableSize, p), "table_size: %d must exceed the member count %d", p.TableSize, len(p.Members))
	}
	d.nonNegative(&p.MinRingSize, p, "min_ring_size")
	d.nonNegative(&p.MaxRingSize, p, "max_ring_size")
	d.nonNegative(&p.ScanLimit, p, "scan_limit")
	if p.PointsPerWeight < 0 {
		d.errAt(at2(&p.PointsPerWeight, p), "points_per_weight: expected a positive number")
	}
	if p.LoadFactor != 0 && p.LoadFactor < 1 {
		d.errAt(at2(&p.LoadFactor, p), "load_factor: %v is below 1 (1.25 lets a member take 25%% more than its share)", p.LoadFactor)
	}
	if p.MinRingSize != 0 && p.MaxRingSize != 0 && p.MinRingSize > p.MaxRingSize {
		d.errAt(at2(&p.MinRingSize, p), "min_ring_size %d exceeds max_ring_size %d", p.MinRingSize, p.MaxRingSize)
	}
	d.fraction(&p.SlowStartMinWeight, p, "slow_start_min_weight")
	d.fraction(&p.PanicThreshold, p, "panic_threshold")
	d.fraction(&p.LocalZoneMinReady, p, "local_zone_min_ready")

	seen := map[string]*Member{}
	for i := range p.Members {
		m := &p.Members[i]
		d.member(m)
		if m.Addr == "" {
			continue
		}
		if first, ok := seen[canonicalAddr(m.Addr)]; ok {
			d.errAt(at2(&m.Addr, m), "duplicate member %s in pool %q: first at line %d", m.Addr, p.Name, d.posOf(&first.Addr).Line)
			continue
		}
		seen[canonicalAddr(m.Addr)] = m
	}
	d.health(&p.Health)
	d.passive(&p.Passive)
}

func canonicalAddr(s string) string {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	return strings.ToLower(s)
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for i := 2; i*i <= n; i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}

func (d *decoder) nonNegative(v *int, parent any, name string) {
	if *v < 0 {
		d.errAt(at2(v, parent), "%s: %d is negative", name, *v)
	}
}

// fraction checks a value in [0, 1]; zero means "off" or "the default".
func (d *decoder) fraction(v *float64, parent any, name string) {
	if *v < 0 || *v > 1 {
		d.errAt(at2(v, parent), "%s: %v is not a fraction from 0 to 1", name, *v)
	}
}

var hostnameRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$`)

// parseMemberAddr checks a member address: IP:port, or host:port with a
// DNS host name. The port is 1 to 65535.
func parseMemberAddr(s string) error {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return fmt.Errorf("port 0: expected 1 to 65535")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("expected IP:port or host:port, such as 198.18.0.11:8080")
	}
	if pn, err := strconv.ParseUint(port, 10, 16); err != nil || pn == 0 {
		return fmt.Errorf("port %q: expected 1 to 65535", port)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil // an IP with a zone or an odd form ParseAddrPort refused
	}
	if len(host) > 253 || !hostnameRE.MatchString(host) {
		return fmt.Errorf("host %q: expected an IP address or a DNS name", host)
	}
	if _, err := strconv.Atoi(strings.ReplaceAll(host, ".", "")); err == nil {
		return fmt.Errorf("host %q: not an IP address", host)
	}
	return nil
}

func (d *decoder) member(m *Member) {
	if m.Addr == "" {
		d.errAt(at2(&m.Addr, m), "a member needs an addr")
	} else if err := parseMemberAddr(m.Addr); err != nil {
		d.errAt(at2(&m.Addr, m), "addr: bad address %q: %v", m.Addr, err)
	}
	if m.Weight < 0 || m.Weight > math.MaxUint32 {
		d.errAt(at2(&m.Weight, m), "weight: %d is out of range: expected 0 to %d", m.Weight, uint32(math.MaxUint32))
	}
	if u, ok := m.Meta["url"]; ok {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			d.errAt(at2(&m.Meta, m), "meta: url %q: expected an absolute http or https URL", u)
		}
	}
	if mac, ok := m.Meta["mac"]; ok {
		if hw, err := net.ParseMAC(mac); err != nil || len(hw) != 6 {
			d.errAt(at2(&m.Meta, m), "meta: mac %q: expected an Ethernet address such as 02:00:00:00:00:01", mac)
		}
	}
}

// probeOption is a health field that only some probes read.
type probeOption struct {
	name   string
	set    func(h *Health) (any, bool)
	probes []ProbeType
}

var (
	httpProbes   = []ProbeType{ProbeHTTP, ProbeHTTPS}
	probeOptions = []probeOption{
		{"path", func(h *Health) (any, bool) { return &h.Path, h.Path != "" }, httpProbes},
		{"method", func(h *Health) (any, bool) { return &h.Method, h.Method != "" }, httpProbes},
		{"host", func(h *Health) (any, bool) { return &h.Host, h.Host != "" }, httpProbes},
		{"status", func(h *Health) (any, bool) { return &h.Status, h.Status != "" }, httpProbes},
		{"body_contains", func(h *Health) (any, bool) { return &h.BodyContains, h.BodyContains != "" }, httpProbes},
		{"agent_header", func(h *Health) (any, bool) { return &h.AgentHeader, h.AgentHeader != "" }, httpProbes},
		{"insecure_skip_verify", func(h *Health) (any, bool) { return &h.InsecureSkipVerify, h.InsecureSkipVerify }, []ProbeType{ProbeHTTPS}},
		{"send", func(h *Health) (any, bool) { return &h.Send, h.Send != "" }, []ProbeType{ProbeUDP, ProbeAgent}},
		{"expect", func(h *Health) (any, bool) { return &h.Expect, h.Expect != "" }, []ProbeType{ProbeUDP}},
		{"query", func(h *Health) (any, bool) { return &h.Query, h.Query != "" }, []ProbeType{ProbeDNS}},
		{"query_type", func(h *Health) (any, bool) { return &h.QueryType, h.QueryType != "" }, []ProbeType{ProbeDNS}},
		{"rcode", func(h *Health) (any, bool) { return &h.Rcode, h.Rcode != "" }, []ProbeType{ProbeDNS}},
		{"want_answer", func(h *Health) (any, bool) { return &h.WantAnswer, h.WantAnswer }, []ProbeType{ProbeDNS}},
		{"net", func(h *Health) (any, bool) { return &h.Net, h.Net != "" }, []ProbeType{ProbeDNS}},
	}
	queryTypes = []string{"A", "AAAA", "SRV", "SOA", "NS", "TXT", "CNAME"}
	rcodes     = []string{"NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL"}
	httpMethod = regexp.MustCompile(`^[A-Z]{1,16}$`)
)

func (d *decoder) health(h *Health) {
	if h.Type == "" {
		h.Type = ProbeTCP
	}
	for _, o := range probeOptions {
		if ptr, set := o.set(h); set && !slices.Contains(o.probes, h.Type) {
			ps := make([]string, len(o.probes))
			for i, p := range o.probes {
				ps[i] = string(p)
			}
			d.errAt(at2(ptr, h), "%s has no effect with probe type %s; it applies to %s", o.name, h.Type, strings.Join(ps, ", "))
		}
	}
	if h.Port < 0 || h.Port > math.MaxUint16 {
		d.errAt(at2(&h.Port, h), "port: %d is out of range: expected 1 to 65535", h.Port)
	}
	d.nonNegative(&h.Rise, h, "rise")
	d.nonNegative(&h.Fall, h, "fall")
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		d.errAt(at2(&h.Path, h), "path: %q must start with /", h.Path)
	}
	if h.Method != "" && !httpMethod.MatchString(h.Method) {
		d.errAt(at2(&h.Method, h), "method: %q is not an HTTP method such as GET or HEAD", h.Method)
	}
	if h.Status != "" {
		if _, _, err := ParseStatusRange(h.Status); err != nil {
			d.errAt(at2(&h.Status, h), "%s", strings.TrimPrefix(err.Error(), "config: "))
		}
	}
	if h.Type == ProbeDNS && h.Query == "" {
		d.errAt(at2(h, h), "a dns probe needs a query (the name to ask for)")
	}
	if h.Query != "" {
		if _, ok := dns.IsDomainName(h.Query); !ok {
			d.errAt(at2(&h.Query, h), "query: %q is not a domain name", h.Query)
		}
	}
	if h.QueryType != "" && !slices.Contains(queryTypes, strings.ToUpper(h.QueryType)) {
		d.errAt(at2(&h.QueryType, h), "query_type: %q: expected one of %s", h.QueryType, strings.Join(queryTypes, ", "))
	}
	if h.Rcode != "" && !slices.Contains(rcodes, strings.ToUpper(h.Rcode)) {
		d.errAt(at2(&h.Rcode, h), "rcode: %q: expected one of %s", h.Rcode, strings.Join(rcodes, ", "))
	}
	if h.Net != "" && h.Net != "udp" && h.Net != "tcp" {
		d.errAt(at2(&h.Net, h), "net: %q: expected udp or tcp", h.Net)
	}
}

// ParseStatusRange parses a health check's status range, "200" or
// "200-399", into its bounds.
func ParseStatusRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi = lo
	var err2 error
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("config: status %q: expected a status or a range of them from 100 to 599, such as 200-399", s)
	}
	return lo, hi, nil
}

func (d *decoder) passive(p *Passive) {
	d.fraction(&p.FailureRate, p, "failure_rate")
	d.fraction(&p.LatencyRate, p, "latency_rate")
	if p.MaxEjectedPercent < 0 || p.MaxEjectedPercent > 100 {
		d.errAt(at2(&p.MaxEjectedPercent, p), "max_ejected_percent: %v is not from 0 to 100", p.MaxEjectedPercent)
	}
	d.nonNegative(&p.Buckets, p, "buckets")
	d.nonNegative(&p.MinRequests, p, "min_requests")
	d.nonNegative(&p.LatencyMinSlow, p, "latency_min_slow")
	if p.MaxEjection != 0 && p.BaseEjection > p.MaxEjection {
		d.errAt(at2(&p.MaxEjection, p), "max_ejection %s is shorter than base_ejection %s", p.MaxEjection, p.BaseEjection)
	}
}

// poolRef checks that *name names a pool.
func (d *decoder) poolRef(name *string, parent any, pools map[string]*Pool) *Pool {
	if *name == "" {
		d.errAt(at2(name, parent), "pool is required")
		return nil
	}
	p, ok := pools[*name]
	if !ok {
		known := make([]string, 0, len(pools))
		for n := range pools {
			known = append(known, n)
		}
		slices.Sort(known)
		hint := "no pools are declared"
		if len(known) > 0 {
			hint = "declared pools: " + strings.Join(known, ", ")
		}
		d.errAt(at2(name, parent), "unknown pool %q; %s", *name, hint)
	}
	return p
}

func (d *decoder) listenerChecks(l *Listener, pools map[string]*Pool) {
	switch {
	case l.Name == "":
		d.errAt(at2(&l.Name, l), "a listener needs a name")
	case !nameRE.MatchString(l.Name):
		d.errAt(at2(&l.Name, l), "name %q: expected letters, digits, '.', '_' and '-' (at most 63)", l.Name)
	}
	if l.Type == "" {
		d.errAt(at2(&l.Type, l), "a listener needs a type: one of redirect, dns, http, tcp, iplb, l2lb")
		return
	}
	switch l.Type {
	case TypeIPLB, TypeL2LB:
		if l.Addr != "" {
			d.errAt(at2(&l.Addr, l), "addr: %s listeners take vip and port, not addr", l.Type)
		}
	default:
		needAddr := l.Type != TypeDNS || len(l.DNS.Zones) > 0
		switch {
		case l.Addr == "" && needAddr:
			d.errAt(at2(&l.Addr, l), "%s listener needs an addr, such as 127.0.0.1:8080 or :8080", article(l.Type))
		case l.Addr != "":
			if _, err := parseListenAddr(l.Addr); err != nil {
				d.errAt(at2(&l.Addr, l), "addr: bad address %q: %v", l.Addr, err)
			}
		}
	}
	switch l.Type {
	case TypeRedirect:
		d.redirect(l.Redirect, pools)
	case TypeDNS:
		d.dnsListener(l, pools)
	case TypeHTTP:
		d.http(l.HTTP, pools)
	case TypeTCP:
		t := l.TCP
		d.poolRef(&t.Pool, t, pools)
		d.nonNegative(&t.ConnectAttempts, t, "connect_attempts")
		d.nonNegative(&t.MaxConns, t, "max_conns")
	case TypeIPLB:
		d.iplb(l.IPLB, pools)
	case TypeL2LB:
		d.l2lb(l.L2LB, pools)
	}
}

func (d *decoder) cookie(c *Cookie) {
	if c == nil {
		return
	}
	if c.Name != "" && !cookieNameRE.MatchString(c.Name) {
		d.errAt(at2(&c.Name, c), "name: %q is not a cookie name (letters, digits and !#$%%&'*+-.^_`|~)", c.Name)
	}
	if c.KeyFile != "" {
		if b, ok := d.readFile(&c.KeyFile, c, "key_file"); ok {
			c.Key = b
			if len(b) < 16 {
				d.errAt(at2(&c.KeyFile, c), "key_file: %s holds %d bytes; a cookie key needs at least 16", c.KeyFile, len(b))
			}
		}
	}
}

var cookieNameRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

func (d *decoder) tls(t *TLS) {
	if t == nil {
		return
	}
	if t.CertFile == "" || t.KeyFile == "" {
		d.errAt(at2(t, t), "tls needs cert_file and key_file")
		return
	}
	cert, okc := d.readFile(&t.CertFile, t, "cert_file")
	key, okk := d.readFile(&t.KeyFile, t, "key_file")
	if okc && okk {
		if _, err := tls.X509KeyPair(cert, key); err != nil {
			d.errAt(at2(&t.CertFile, t), "cert_file, key_file: %v", err)
		}
	}
}

func (d *decoder) prefixes(list []string, parent any, name string) {
	for i := range list {
		if _, err := ParsePrefix(list[i]); err != nil {
			d.errAt(at2(&list[i], parent), "%s: %q: expected an IP address or a prefix such as 10.0.0.0/8", name, list[i])
		}
	}
}

// ParsePrefix parses a network as a configuration writes it (in
// trusted_proxies and zone rules): a prefix such as 10.0.0.0/8, or a single
// address, read as a full-length prefix. The result is masked.
func ParsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("config: %q is neither an IP address nor a prefix", s)
	}
	return p.Masked(), nil
}

func (d *decoder) zoneRules(rules []ZoneRule) {
	for i := range rules {
		r := &rules[i]
		if r.Prefix == "" || r.Zone == "" {
			d.errAt(at2(r, r), "a zone rule needs a prefix and a zone")
			continue
		}
		if _, err := ParsePrefix(r.Prefix); err != nil {
			d.errAt(at2(&r.Prefix, r), "prefix: %q: expected a prefix such as 198.18.0.0/16", r.Prefix)
		}
	}
}

func (d *decoder) redirect(r *Redirect, pools map[string]*Pool) {
	d.poolRef(&r.Pool, r, pools)
	switch r.Code {
	case 0, 301, 302, 303, 307, 308:
	default:
		d.errAt(at2(&r.Code, r), "code: %d: expected 301, 302, 303, 307 or 308", r.Code)
	}
	d.cookie(r.Cookie)
	d.zoneRules(r.Zones)
	d.nonNegative(&r.DuplicateLinks, r, "duplicate_links")
	if r.FallbackURL != "" {
		if u, err := url.Parse(r.FallbackURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.errAt(at2(&r.FallbackURL, r), "fallback_url: %q: expected an absolute http or https URL", r.FallbackURL)
		}
	}
	d.prefixes(r.TrustedProxies, r, "trusted_proxies")
	d.tls(r.TLS)
}

func (d *decoder) http(h *HTTP, pools map[string]*Pool) {
	if h.Pool == "" && len(h.Routes) == 0 {
		d.errAt(at2(h, h), "an http listener needs a pool, routes, or both")
	}
	if h.Pool != "" {
		d.poolRef(&h.Pool, h, pools)
	}
	type routeKey struct{ host, prefix string }
	seen := map[routeKey]*Route{}
	for i := range h.Routes {
		r := &h.Routes[i]
		d.poolRef(&r.Pool, r, pools)
		host := strings.ToLower(r.Host)
		if host != "" && (len(host) > 253 || !hostnameRE.MatchString(strings.TrimPrefix(host, "*."))) {
			d.errAt(at2(&r.Host, r), "host: %q: expected a host name or *.domain", r.Host)
		}
		prefix := r.PathPrefix
		if prefix == "" {
			prefix = "/"
		} else if !strings.HasPrefix(prefix, "/") {
			d.errAt(at2(&r.PathPrefix, r), "path_prefix: %q must start with /", r.PathPrefix)
		}
		k := routeKey{host, prefix}
		if first, ok := seen[k]; ok {
			d.errAt(at2(r, r), "duplicate route (host %q, path_prefix %q): first at line %d", r.Host, prefix, d.posOf(first).Line)
			continue
		}
		seen[k] = r
	}
	d.nonNegative(&h.MaxTries, h, "max_tries")
	for i, s := range h.RetryStatuses {
		if s < 100 || s > 599 {
			d.errAt(at2(&h.RetryStatuses[i], h), "retry_statuses: %d is not an HTTP status", s)
		}
	}
	if h.RetryBufferBytes < 0 {
		d.errAt(at2(&h.RetryBufferBytes, h), "retry_buffer_bytes: %d is negative", h.RetryBufferBytes)
	}
	if b := h.RetryBudget; b != nil {
		if b.Percent <= 0 || b.Percent > 100 {
			d.errAt(at2(&b.Percent, b), "retry_budget: percent %v must be in (0, 100]", b.Percent)
		}
		d.nonNegative(&b.MinConcurrency, b, "min_concurrency")
	}
	if c := h.Circuit; c != nil {
		d.nonNegative(&c.MaxRequests, c, "max_requests")
		d.nonNegative(&c.MaxRetries, c, "max_retries")
		d.nonNegative(&c.MemberMaxRequests, c, "member_max_requests")
	}
	d.nonNegative(&h.MaxConns, h, "max_conns")
	d.nonNegative(&h.MaxQueue, h, "max_queue")
	d.nonNegative(&h.MaxIdleConns, h, "max_idle_conns")
	if h.MaxQueue > 0 && h.MaxConns == 0 {
		d.errAt(at2(&h.MaxQueue, h), "max_queue has no effect without max_conns")
	}
	d.cookie(h.Sticky)
	d.prefixes(h.TrustedProxies, h, "trusted_proxies")
	d.tls(h.TLS)
}

func (d *decoder) iplb(s *IPLB, pools map[string]*Pool) {
	vip, err := netip.ParseAddr(s.VIP)
	switch {
	case s.VIP == "":
		d.errAt(at2(s, s), "an iplb listener needs a vip")
	case err != nil:
		d.errAt(at2(&s.VIP, s), "vip: bad address %q: expected an IP address", s.VIP)
	case !usableVIP(vip):
		d.errAt(at2(&s.VIP, s), "vip: %s cannot be a virtual address: expected a unicast address", s.VIP)
	}
	d.port(&s.Port, s)
	p := d.poolRef(&s.Pool, s, pools)
	if p != nil && err == nil {
		d.family(vip, p, &s.Pool, s)
	}
	d.udpHealth(s.Proto, p, &s.Pool, s)
	if s.SNAT != "" {
		a, err := netip.ParseAddr(s.SNAT)
		switch {
		case s.Mode != ModeFullNAT:
			d.errAt(at2(&s.SNAT, s), "snat has no effect without mode: fullnat")
		case err != nil:
			d.errAt(at2(&s.SNAT, s), "snat: bad address %q: expected an IP address", s.SNAT)
		case vip.IsValid() && a.Unmap().Is4() != vip.Unmap().Is4():
			d.errAt(at2(&s.SNAT, s), "snat %s and vip %s are of different address families", s.SNAT, s.VIP)
		}
	}
	if s.TableSize != 0 && (s.TableSize < 0 || s.TableSize > maxTableSize || !isPrime(s.TableSize)) {
		d.errAt(at2(&s.TableSize, s), "table_size: %d is not a prime from 2 to %d", s.TableSize, maxTableSize)
	}
	d.ifname(&s.Interface, s, false)
}

// family checks that every member of p is an IP address of vip's family.
func (d *decoder) family(vip netip.Addr, p *Pool, ref *string, parent any) {
	if !d.ipMembers(p, ref, parent, "a kernel data plane") {
		return
	}
	for _, m := range p.Members {
		ap, err := netip.ParseAddrPort(m.Addr)
		if err == nil && ap.Addr().Unmap().Is4() != vip.Unmap().Is4() {
			d.errAt(at2(ref, parent), "pool %q: member %s is not of the vip's address family", p.Name, m.Addr)
			return
		}
	}
}

// ipMembers checks that p's members are IP addresses, not host names, for
// a listener that must know them (DNS answers, kernel maps).
func (d *decoder) ipMembers(p *Pool, ref *string, parent any, who string) bool {
	for _, m := range p.Members {
		if _, err := netip.ParseAddrPort(m.Addr); err != nil && parseMemberAddr(m.Addr) == nil {
			d.errAt(at2(ref, parent), "pool %q: member %s is a host name; %s needs IP addresses", p.Name, m.Addr, who)
			return false
		}
	}
	return true
}

// udpHealth checks that a pool serving a UDP service does not rely on the
// default health check, a TCP connect, which a UDP-only backend fails.
func (d *decoder) udpHealth(proto Proto, p *Pool, ref *string, parent any) {
	if proto != ProtoUDP || p == nil {
		return
	}
	if _, set := d.pos[&p.Health.Type]; !set {
		d.errAt(at2(ref, parent), "pool %q serves a udp service but has the default tcp health check: set health type udp, dns or none", p.Name)
	}
}

func (d *decoder) port(p *int, parent any) {
	if *p < 1 || *p > math.MaxUint16 {
		d.errAt(at2(p, parent), "port: %d: expected 1 to 65535", *p)
	}
}

// usableVIP reports whether a is an address clients can send a flow to.
func usableVIP(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsMulticast() && !a.Unmap().IsLoopback() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

var ifnameRE = regexp.MustCompile(`^[^/\s:]{1,15}$`)

func (d *decoder) ifname(s *string, parent any, required bool) {
	switch {
	case *s == "" && required:
		d.errAt(at2(parent, parent), "interface is required")
	case *s != "" && !ifnameRE.MatchString(*s):
		d.errAt(at2(s, parent), "interface: %q is not an interface name", *s)
	}
}

func (d *decoder) l2lb(s *L2LB, pools map[string]*Pool) {
	d.ifname(&s.Interface, s, true)
	if len(s.VIPs) == 0 {
		d.errAt(at2(&s.VIPs, s), "an l2lb listener needs at least one vip in vips")
	}
	for i := range s.VIPs {
		v := &s.VIPs[i]
		vip, err := netip.ParseAddr(v.VIP)
		switch {
		case v.VIP == "":
			d.errAt(at2(v, v), "a vip needs a vip address")
		case err != nil:
			d.errAt(at2(&v.VIP, v), "vip: bad address %q: expected an IP address", v.VIP)
		case !usableVIP(vip):
			d.errAt(at2(&v.VIP, v), "vip: %s cannot be a virtual address: expected a unicast address", v.VIP)
		}
		d.port(&v.Port, v)
		p := d.poolRef(&v.Pool, v, pools)
		if p != nil && err == nil {
			d.family(vip, p, &v.Pool, v)
		}
		d.udpHealth(v.Proto, p, &v.Pool, v)
	}
	d.nonNegative(&s.MaxBackends, s, "max_backends")
	d.nonNegative(&s.ConnTableSize, s, "conn_table_size")
}
