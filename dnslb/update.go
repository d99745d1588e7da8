package dnslb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/miekg/dns"
)

// Errors an [Updater] reports for answers that retrying will not fix
// without a configuration change. They arrive wrapped in an [*RcodeError]
// that carries the server's rcode and TSIG error; match with errors.Is.
var (
	// ErrNotAuth: the server is not authoritative for the zone or did not
	// accept the request's authentication (RFC 2136 NOTAUTH).
	ErrNotAuth = errors.New("dnslb: server answered NOTAUTH: not authoritative for the zone, or update not authorized")
	// ErrRefused: the server's policy refuses the update (no ACL for the
	// key, updates disabled).
	ErrRefused = errors.New("dnslb: server REFUSED the request")
	// ErrBadSig: the TSIG signature did not verify: the secret or
	// algorithm differs from the server's key of that name.
	ErrBadSig = errors.New("dnslb: TSIG signature rejected (BADSIG): wrong secret or algorithm")
	// ErrBadKey: the server does not know the TSIG key name.
	ErrBadKey = errors.New("dnslb: TSIG key unknown to the server (BADKEY)")
	// ErrBadTime: the clocks of this host and the server differ by more
	// than the TSIG fudge (RFC 8945 BADTIME).
	ErrBadTime = errors.New("dnslb: TSIG time outside the server's window (BADTIME): check the clocks")
	// ErrServerRcode: any other unsuccessful rcode (SERVFAIL, NOTZONE,
	// FORMERR, ...).
	ErrServerRcode = errors.New("dnslb: server answered with an error rcode")
)

// RcodeError is an unsuccessful answer from the server an [Updater] talks
// to. It unwraps to one of the sentinel errors (ErrNotAuth, ErrBadSig, ...).
type RcodeError struct {
	// Op is "query" (reading the RRset) or "update".
	Op string
	// Rcode is the response's rcode; TSIGError the TSIG record's error
	// field (0 when the response had no TSIG error).
	Rcode, TSIGError int
}

// Error describes the failure.
func (e *RcodeError) Error() string {
	s := fmt.Sprintf("dnslb: %s: rcode %s", e.Op, dns.RcodeToString[e.Rcode])
	if e.TSIGError != 0 {
		s += ", TSIG error " + dns.RcodeToString[e.TSIGError]
	}
	return s + ": " + e.Unwrap().Error()
}

// Unwrap returns the sentinel for the rcode.
func (e *RcodeError) Unwrap() error {
	switch e.TSIGError {
	case dns.RcodeBadSig:
		return ErrBadSig
	case dns.RcodeBadKey:
		return ErrBadKey
	case dns.RcodeBadTime:
		return ErrBadTime
	}
	switch e.Rcode {
	case dns.RcodeNotAuth:
		return ErrNotAuth
	case dns.RcodeRefused:
		return ErrRefused
	}
	return ErrServerRcode
}

// TSIGKey is a shared secret for signing requests (RFC 8945).
type TSIGKey struct {
	// Name is the key's name, as configured on the server ("lbkit." or
	// "lbkit"; it is made fully qualified).
	Name string
	// Secret is the key in base64, as in the server's configuration.
	Secret string
	// Algorithm is the HMAC algorithm name, such as dns.HmacSHA256
	// ("hmac-sha256."), the default when empty.
	Algorithm string
}

// UpdaterConfig configures an [Updater]. Server, Zone, Name and Pool are
// required; every other field has a useful zero value, documented on it.
type UpdaterConfig struct {
	// Server is the primary server's address, "host:port".
	Server string
	// Zone is the zone to update, such as "example.test.".
	Zone string
	// Name is the owner of the RRset to maintain, inside Zone.
	Name string
	// Type is dns.TypeA (the default when zero) or dns.TypeAAAA. Backends
	// of the other address family are ignored.
	Type uint16
	// TTL of the records added. Zero means DefaultTTL. (Servers may
	// align it with the TTL of records already at the name.)
	TTL time.Duration
	// Pool supplies the addresses: the RRset is kept equal to the
	// addresses of its ready backends.
	Pool *balancer.Pool
	// Fallback says what to publish when no backend of the family is
	// ready: FallbackAll (the zero value) publishes every member that is
	// not draining, as the Server answers; FallbackServFail publishes
	// nothing (every owned record is deleted).
	Fallback Fallback
	// Key signs the updates. An empty Name sends them unsigned, which
	// servers normally refuse.
	Key TSIGKey
	// Net is the transport for updates, "udp" (the default) or "tcp"; an
	// update larger than 512 bytes goes over TCP regardless. The RRset is
	// always read over TCP, so large sets are not truncated.
	Net string
	// Timeout bounds each exchange with the server. Zero means 2 s.
	Timeout time.Duration
	// Interval is how often Run reconciles when nothing changed, so
	// records lost on the server (a restart from an old zone file, a
	// manual edit) come back. Zero means 30 s.
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the exponential wait between
	// failed attempts in Run. Zero means 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives changes (info) and failures (warn). Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Updater keeps one RRset (a name and type A or AAAA) on an external
// authoritative server equal to the ready set of a balancer.Pool, with
// RFC 2136 dynamic updates signed by TSIG.
//
// Each pass reads the RRset from the server, computes what to add and
// what to delete, and sends all of it in one UPDATE (servers commit each
// update as a zone version, so one per change costs ~10 ms on Knot). It
// deletes only records it owns — the addresses of every member its pool
// ever had — so records other tools keep at the same name survive.
//
// All methods are safe for concurrent use; passes are serialized.
type Updater struct {
	cfg      UpdaterConfig
	log      *slog.Logger
	zone     string
	name     string
	rrtype   uint16
	ttl      uint32
	key      string
	alg      string
	timeout  time.Duration
	interval time.Duration
	minBack  time.Duration
	maxBack  time.Duration

	// exchange sends m over netw; tests replace it.
	exchange func(ctx context.Context, m *dns.Msg, netw string) (*dns.Msg, error)

	mu    sync.Mutex
	owned map[netip.Addr]bool
}

// NewUpdater validates cfg and returns an Updater. It does not contact
// the server.
func NewUpdater(cfg UpdaterConfig) (*Updater, error) {
	if cfg.Pool == nil {
		return nil, errors.New("dnslb: UpdaterConfig.Pool is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
		return nil, fmt.Errorf("dnslb: UpdaterConfig.Server %q: %w", cfg.Server, err)
	}
	zone := dns.CanonicalName(cfg.Zone)
	name := dns.CanonicalName(cfg.Name)
	if _, ok := dns.IsDomainName(zone); !ok || cfg.Zone == "" {
		return nil, fmt.Errorf("dnslb: invalid zone %q", cfg.Zone)
	}
	if _, ok := dns.IsDomainName(name); !ok || cfg.Name == "" || !dns.IsSubDomain(zone, name) {
		return nil, fmt.Errorf("dnslb: name %q is not inside zone %q", cfg.Name, zone)
	}
	u := &Updater{cfg: cfg, log: cfg.Logger, zone: zone, name: name, rrtype: cfg.Type,
		timeout: cfg.Timeout, interval: cfg.Interval, minBack: cfg.MinBackoff, maxBack: cfg.MaxBackoff,
		owned: make(map[netip.Addr]bool)}
	if u.log == nil {
		u.log = slog.Default()
	}
	u.log = u.log.With("pool", cfg.Pool.Name())
	if u.rrtype == 0 {
		u.rrtype = dns.TypeA
	}
	if u.rrtype != dns.TypeA && u.rrtype != dns.TypeAAAA {
		return nil, errors.New("dnslb: UpdaterConfig.Type must be A or AAAA")
	}
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < 0 || ttl/time.Second > 1<<31-1 {
		return nil, errors.New("dnslb: UpdaterConfig.TTL out of range")
	}
	u.ttl = uint32(ttl / time.Second)
	switch cfg.Net {
	case "", "udp", "tcp":
	default:
		return nil, fmt.Errorf("dnslb: UpdaterConfig.Net %q: want udp or tcp", cfg.Net)
	}
	if cfg.Fallback > FallbackServFail {
		return nil, errors.New("dnslb: unknown UpdaterConfig.Fallback")
	}
	if cfg.Key.Name != "" {
		u.key = dns.CanonicalName(cfg.Key.Name)
		u.alg = dns.CanonicalName(cfg.Key.Algorithm)
		if cfg.Key.Algorithm == "" {
			u.alg = dns.HmacSHA256
		}
		if cfg.Key.Secret == "" {
			return nil, errors.New("dnslb: TSIGKey.Secret is required with a key name")
		}
	}
	if u.timeout == 0 {
		u.timeout = 2 * time.Second
	}
	if u.interval == 0 {
		u.interval = 30 * time.Second
	}
	if u.minBack == 0 {
		u.minBack = 500 * time.Millisecond
	}
	if u.maxBack == 0 {
		u.maxBack = 30 * time.Second
	}
	if u.timeout < 0 || u.interval < 0 || u.minBack < 0 || u.maxBack < u.minBack {
		return nil, errors.New("dnslb: UpdaterConfig durations must be positive, MaxBackoff ≥ MinBackoff")
	}
	u.exchange = u.dnsExchange
	u.own()
	return u, nil
}

func (u *Updater) dnsExchange(ctx context.Context, m *dns.Msg, netw string) (*dns.Msg, error) {
	c := &dns.Client{Net: netw, Timeout: u.timeout}
	if u.key != "" {
		c.TsigSecret = map[string]string{u.key: u.cfg.Key.Secret}
	}
	r, _, err := c.ExchangeContext(ctx, m, u.cfg.Server)
	if r != nil && err != nil {
		// An unsigned error response to a signed request (BADSIG,
		// BADKEY) fails verification; the rcode says more.
		if t := r.IsTsig(); (t != nil && t.Error != 0) || r.Rcode != dns.RcodeSuccess {
			return r, nil
		}
	}
	return r, err
}

// own records the addresses of the pool's current members as owned.
// u.mu must be held or u not yet shared.
func (u *Updater) own() {
	for _, ep := range u.cfg.Pool.Endpoints() {
		u.owned[ep.Addr().Addr().Unmap()] = true
	}
}

func (u *Updater) family(a netip.Addr) bool {
	return a.Is4() == (u.rrtype == dns.TypeA)
}

// desired returns the addresses the RRset should hold now.
func (u *Updater) desired() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		a = a.Unmap()
		if u.family(a) && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, w := range u.cfg.Pool.Snapshot().Ready {
		add(w.Endpoint.Addr().Addr())
	}
	if len(out) == 0 && u.cfg.Fallback == FallbackAll {
		for _, ep := range u.cfg.Pool.Endpoints() {
			if !ep.Draining() {
				add(ep.Addr().Addr())
			}
		}
	}
	return out
}

// Sync makes one reconciliation pass: it reads the RRset from the server
// and sends one UPDATE with the records to add and the owned records to
// delete, if any. It blocks for up to two exchanges with the server and
// returns a network error, an [*RcodeError], or nil.
func (u *Updater) Sync(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.own()
	want := u.desired()
	have, err := u.read(ctx)
	if err != nil {
		return err
	}
	var adds, dels []netip.Addr
	for _, a := range want {
		if !have[a] {
			adds = append(adds, a)
		}
	}
	for a := range have {
		if u.owned[a] && !slices.Contains(want, a) {
			dels = append(dels, a)
		}
	}
	if len(adds) == 0 && len(dels) == 0 {
		return nil
	}
	slices.SortFunc(dels, netip.Addr.Compare)
	m := new(dns.Msg)
	m.SetUpdate(u.zone)
	if len(adds) > 0 {
		m.Insert(u.rrs(adds, u.ttl))
	}
	if len(dels) > 0 {
		m.Remove(u.rrs(dels, 0))
	}
	if u.key != "" {
		m.SetTsig(u.key, u.alg, 300, time.Now().Unix())
	}
	netw := u.cfg.Net
	if netw == "" {
		netw = "udp"
	}
	if netw == "udp" && m.Len() > 512 {
		netw = "tcp" // too large for a UDP request without EDNS
	}
	r, err := u.exchange(ctx, m, netw)
	if err != nil {
		return fmt.Errorf("dnslb: update %s at %s: %w", u.name, u.cfg.Server, err)
	}
	if err := rcodeErr("update", r); err != nil {
		return err
	}
	u.log.Info("dnslb: updated", "name", u.name, "server", u.cfg.Server, "added", adds, "deleted", dels)
	return nil
}

func rcodeErr(op string, r *dns.Msg) error {
	te := 0
	if t := r.IsTsig(); t != nil {
		te = int(t.Error)
	}
	if r.Rcode == dns.RcodeSuccess && te == 0 {
		return nil
	}
	if op == "query" && r.Rcode == dns.RcodeNameError && te == 0 {
		return nil
	}
	return &RcodeError{Op: op, Rcode: r.Rcode, TSIGError: te}
}

// rrs returns one A or AAAA record per address.
func (u *Updater) rrs(as []netip.Addr, ttl uint32) []dns.RR {
	out := make([]dns.RR, len(as))
	for i, a := range as {
		h := dns.RR_Header{Name: u.name, Rrtype: u.rrtype, Class: dns.ClassINET, Ttl: ttl}
		if u.rrtype == dns.TypeA {
			out[i] = &dns.A{Hdr: h, A: a.AsSlice()}
		} else {
			out[i] = &dns.AAAA{Hdr: h, AAAA: a.AsSlice()}
		}
	}
	return out
}

// read returns the addresses the server holds at the name.
func (u *Updater) read(ctx context.Context) (map[netip.Addr]bool, error) {
	m := new(dns.Msg)
	m.SetQuestion(u.name, u.rrtype)
	m.RecursionDesired = false
	r, err := u.exchange(ctx, m, "tcp")
	if err != nil {
		return nil, fmt.Errorf("dnslb: query %s at %s: %w", u.name, u.cfg.Server, err)
	}
	if err := rcodeErr("query", r); err != nil {
		return nil, err
	}
	have := make(map[netip.Addr]bool)
	for _, rr := range r.Answer {
		if dns.CanonicalName(rr.Header().Name) != u.name {
			continue
		}
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			ip = v.A
		case *dns.AAAA:
			ip = v.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok && u.family(a.Unmap()) {
			have[a.Unmap()] = true
		}
	}
	return have, nil
}

// Run reconciles until ctx ends, then returns ctx.Err(). It syncs at
// once, again whenever the pool publishes a new snapshot and every
// Interval; after a failure (server unreachable, rejected update) it
// retries with exponential backoff from MinBackoff to MaxBackoff, logging
// each failure.
func (u *Updater) Run(ctx context.Context) error {
	var backoff time.Duration
	for {
		snap := u.cfg.Pool.Snapshot()
		err := u.Sync(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := u.interval
		var changed <-chan struct{} = snap.Changed()
		if err != nil {
			backoff = min(max(2*backoff, u.minBack), u.maxBack)
			wait, changed = backoff, nil
			u.log.Warn("dnslb: sync failed", "name", u.name, "server", u.cfg.Server, "err", err, "retry", wait)
		} else {
			backoff = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-changed:
			t.Stop()
		case <-t.C:
		}
	}
}
