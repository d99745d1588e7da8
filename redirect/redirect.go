package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/internal/h1"
)

// Affinity selects how a [Handler] keeps a client on the same backend.
type Affinity uint8

// The affinity modes.
const (
	// AffinityNone picks afresh for every request.
	AffinityNone Affinity = iota
	// AffinityClientIP uses [balancer.HashAddr] of the client address as
	// the pick key. It needs a hash-based policy (Maglev, ring hash,
	// rendezvous): a handler that builds its own pool uses Maglev for it.
	AffinityClientIP
	// AffinityCookie sets a cookie naming the chosen backend in an opaque,
	// HMAC-signed form. While that backend is ready, requests carrying the
	// cookie go back to it; otherwise the handler picks again and re-sets
	// the cookie.
	AffinityCookie
)

// Defaults for [Config] fields left zero.
const (
	DefaultCookieName   = "lbkit_backend"
	DefaultRetryAfter   = 5 * time.Second
	DefaultMaxURLLength = 8192
)

// ErrHostName is returned (wrapped) by [New] for a Target whose URL names
// a host that is neither an IP literal nor "localhost" and whose Addr is
// not set: the handler does not resolve names.
var ErrHostName = errors.New("redirect: backend URL host is not an IP literal; set Target.Addr")

// Target is one backend as the redirect handler sees it: where clients are
// sent (URL) and which pool member that is (Addr).
type Target struct {
	// URL is the backend's base URL: scheme (http or https), host, an
	// optional port and an optional path prefix, e.g.
	// "http://198.18.0.10:8080/mirror". Redirects append the request's
	// path and query to it. User info, query and fragment are rejected.
	URL string
	// Addr is the pool member the URL stands for. Zero means the URL's
	// host and port (default 80 or 443 by scheme), which must then be an
	// IP literal or "localhost" (taken as 127.0.0.1): names are never
	// resolved, so a URL with a DNS name needs Addr.
	Addr netip.AddrPort
	// Weight is the backend's relative share of redirects. Zero means 1.
	Weight uint32
	// Zone names the backend's location, matched against [ZoneRule.Zone].
	Zone string
}

// ZoneRule maps clients whose address is in Prefix to Zone. The longest
// matching prefix wins.
type ZoneRule struct {
	Prefix netip.Prefix
	Zone   string
}

// Config configures a [Handler]. Only Backends is required.
type Config struct {
	// Backends are the redirect targets. Required, at least one; distinct
	// addresses.
	Backends []Target

	// Pool is the pool to pick from. Nil means the handler makes its own
	// from Builder and Backends. A pool given here gets every target added
	// (balancer.Pool.Add keeps existing members' state) and is used as is
	// otherwise: drive its health with health.Checker.Drive or
	// Pool.SetHealthy. Members without a matching target are never named
	// in a redirect.
	Pool *balancer.Pool
	// Builder is the policy for the handler's own pool and for the
	// per-zone pickers. Nil means round robin when every target has the
	// same weight, smooth weighted round robin when weights differ, and
	// Maglev (which keeps equal keys together) when Affinity is
	// AffinityClientIP.
	Builder balancer.Builder

	// Code is the redirect status for GET and HEAD: 301, 302, 303, 307 or
	// 308. Zero means 302 (Found). Other methods get a status that keeps
	// the method and body: 307 instead of 302 and 308 instead of 301; 303,
	// 307 and 308 are used as they are.
	Code int
	// MaxAge, when positive, lets clients cache redirects for that long
	// ("Cache-Control: private, max-age=N"). Zero means "no-store", so a
	// client whose backend died asks again at once: leave it zero unless
	// redirects are expensive for you.
	MaxAge time.Duration

	// Affinity selects client stickiness. Zero means none.
	Affinity Affinity
	// CookieName is the affinity cookie's name. Empty means
	// DefaultCookieName.
	CookieName string
	// CookieKey signs affinity cookies. Replicas that must honour each
	// other's cookies, or a handler that must honour cookies across
	// restarts, share a key of at least 16 bytes. Nil means a random key.
	CookieKey []byte
	// CookieMaxAge is the cookie's lifetime. Zero means a session cookie.
	CookieMaxAge time.Duration
	// CookieSecure adds the Secure attribute to the cookie.
	CookieSecure bool

	// Zones maps client address ranges to zones. A client in a zone is
	// sent to a ready backend of that zone when there is one, and to any
	// ready backend otherwise.
	Zones []ZoneRule

	// DuplicateLinks, when positive, adds up to that many
	// "Link: <url>; rel=duplicate" values (RFC 6249) naming the same
	// resource on other ready backends, for clients that can fail over by
	// themselves.
	DuplicateLinks int

	// FallbackURL, when set, is where clients go (302) when no backend is
	// ready. Empty means 503 Service Unavailable with Retry-After.
	FallbackURL string
	// RetryAfter is the Retry-After of a 503. Zero means DefaultRetryAfter.
	RetryAfter time.Duration

	// TrustedProxies are the peers whose X-Forwarded-For is believed. The
	// client is the rightmost address in X-Forwarded-For that is not in
	// TrustedProxies. Empty means X-Forwarded-For is ignored and the client
	// is the TCP peer.
	TrustedProxies []netip.Prefix

	// MaxURLLength caps the length of a Location; longer requests get 414
	// URI Too Long. Zero means DefaultMaxURLLength.
	MaxURLLength int

	// Logger receives configuration problems found at request time (a
	// pool member with no target). Nil means slog.Default().
	Logger *slog.Logger
}

// Handler is an [http.Handler] that redirects each request to a ready
// backend. It is safe for concurrent use. ServeHTTP never blocks beyond
// writing the response, reads no request body and allocates one string
// per plain redirect (the Location header value).
type Handler struct {
	pool    *balancer.Pool
	own     bool
	builder balancer.Builder
	targets []*target
	byAddr  map[netip.AddrPort]*target

	code, codeUnsafe int
	cacheControl     []string
	vary             []string

	affinity   Affinity
	cookieName string
	byToken    map[string]*target

	zones    []ZoneRule
	zmu      sync.Mutex
	zoneView atomic.Pointer[zoneView]

	links       int
	fallback    []string
	retryAfter  []string
	trusted     h1.Trusted
	maxURL      int
	log         *slog.Logger
	noTargetLog atomic.Bool
}

// target is the handler's precomputed view of one Target.
type target struct {
	backend   balancer.Backend
	base      string   // scheme://host[:port][/prefix], no trailing slash
	token     string   // signed cookie value
	setCookie []string // the whole Set-Cookie header value
}

var _ http.Handler = (*Handler)(nil)

// Preallocated header values: assigned straight into the header map.
var (
	hdrNoStore    = []string{"no-store"}
	hdrVaryCookie = []string{"Cookie"}
	hdrTextPlain  = []string{"text/plain; charset=utf-8"}
	hdrNoSniff    = []string{"nosniff"}
	bodyNoBackend = []byte("redirect: no backend available\n")
	bodyTooLong   = []byte("redirect: URI too long\n")
	bodyBadPath   = []byte("redirect: path has dot segments\n")
)

// New validates cfg and returns a handler. It returns an error for a
// missing or malformed target, a host name without Addr ([ErrHostName]),
// duplicate addresses, an unsupported Code, a bad FallbackURL or a short
// CookieKey.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("redirect: Config.Backends is empty")
	}
	h := &Handler{
		affinity:   cfg.Affinity,
		cookieName: cfg.CookieName,
		links:      cfg.DuplicateLinks,
		maxURL:     cfg.MaxURLLength,
		log:        cfg.Logger,
		byAddr:     make(map[netip.AddrPort]*target, len(cfg.Backends)),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.maxURL <= 0 {
		h.maxURL = DefaultMaxURLLength
	}
	switch cfg.Code {
	case 0, http.StatusFound:
		h.code, h.codeUnsafe = http.StatusFound, http.StatusTemporaryRedirect
	case http.StatusMovedPermanently:
		h.code, h.codeUnsafe = http.StatusMovedPermanently, http.StatusPermanentRedirect
	case http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		h.code, h.codeUnsafe = cfg.Code, cfg.Code
	default:
		return nil, fmt.Errorf("redirect: Code %d is not a redirect status (301, 302, 303, 307, 308)", cfg.Code)
	}
	if cfg.Affinity > AffinityCookie {
		return nil, fmt.Errorf("redirect: unknown Affinity %d", cfg.Affinity)
	}
	if cfg.MaxAge < 0 || cfg.CookieMaxAge < 0 || cfg.RetryAfter < 0 || cfg.DuplicateLinks < 0 {
		return nil, errors.New("redirect: MaxAge, CookieMaxAge, RetryAfter and DuplicateLinks must not be negative")
	}
	if cfg.MaxAge > 0 {
		h.cacheControl = []string{"private, max-age=" + strconv.FormatInt(int64(cfg.MaxAge/time.Second), 10)}
	} else {
		h.cacheControl = hdrNoStore
	}
	ra := cfg.RetryAfter
	if ra == 0 {
		ra = DefaultRetryAfter
	}
	h.retryAfter = []string{strconv.FormatInt(int64((ra+time.Second-1)/time.Second), 10)}
	if cfg.FallbackURL != "" {
		base, _, err := parseBase(cfg.FallbackURL, true)
		if err != nil {
			return nil, fmt.Errorf("redirect: FallbackURL: %w", err)
		}
		h.fallback = []string{base}
	}
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			return nil, errors.New("redirect: invalid prefix in TrustedProxies")
		}
		h.trusted = append(h.trusted, p.Masked())
	}
	for _, z := range cfg.Zones {
		if !z.Prefix.IsValid() || z.Zone == "" {
			return nil, errors.New("redirect: a ZoneRule needs a valid Prefix and a Zone")
		}
		h.zones = append(h.zones, ZoneRule{Prefix: z.Prefix.Masked(), Zone: z.Zone})
	}
	// Longest prefix first, so the first match is the best one.
	slices.SortStableFunc(h.zones, func(a, b ZoneRule) int { return b.Prefix.Bits() - a.Prefix.Bits() })

	var signer *h1.CookieSigner
	if cfg.Affinity == AffinityCookie {
		if h.cookieName == "" {
			h.cookieName = DefaultCookieName
		}
		if !h1.ValidCookieName(h.cookieName) {
			return nil, fmt.Errorf("redirect: invalid CookieName %q", h.cookieName)
		}
		var err error
		if signer, err = h1.NewCookieSigner("redirect", cfg.CookieKey, cfg.CookieMaxAge, cfg.CookieSecure); err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
		h.byToken = make(map[string]*target, len(cfg.Backends))
		h.vary = hdrVaryCookie
	}

	backends := make([]balancer.Backend, 0, len(cfg.Backends))
	for i, tc := range cfg.Backends {
		base, addr, err := parseBase(tc.URL, false)
		if err != nil {
			return nil, fmt.Errorf("redirect: backend %d (%q): %w", i, tc.URL, err)
		}
		if tc.Addr.IsValid() {
			addr = tc.Addr
		}
		if !addr.IsValid() {
			return nil, fmt.Errorf("%w: backend %d (%q)", ErrHostName, i, tc.URL)
		}
		if _, dup := h.byAddr[addr]; dup {
			return nil, fmt.Errorf("redirect: backend %d (%q): duplicate address %v", i, tc.URL, addr)
		}
		t := &target{backend: balancer.Backend{Addr: addr, Weight: tc.Weight, Zone: tc.Zone}, base: base}
		if signer != nil {
			t.token = signer.Token(addr)
			t.setCookie = []string{signer.SetCookie(h.cookieName, t.token)}
			h.byToken[t.token] = t
		}
		h.targets = append(h.targets, t)
		h.byAddr[addr] = t
		backends = append(backends, t.backend)
	}

	h.builder = cfg.Builder
	if h.builder == nil {
		h.builder = defaultBuilder(cfg)
	}
	if cfg.Pool != nil {
		h.pool = cfg.Pool
		for _, b := range backends {
			if err := h.pool.Add(b); err != nil {
				return nil, fmt.Errorf("redirect: %w", err)
			}
		}
	} else {
		p, err := balancer.New(balancer.Config{Builder: h.builder, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
		if err := p.Set(backends); err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
		h.pool, h.own = p, true
	}
	return h, nil
}

// Pool returns the pool the handler picks from: the one given in Config,
// or the handler's own. Drive its health from a checker.
func (h *Handler) Pool() *balancer.Pool { return h.pool }

// Close releases the handler's own pool (its slow-start timer). It does
// nothing to a pool passed in Config. The handler keeps working.
func (h *Handler) Close() error {
	if h.own {
		return h.pool.Close()
	}
	return nil
}

// BaseURL returns the base URL redirects to addr start with, and whether
// addr is one of the handler's targets.
func (h *Handler) BaseURL(addr netip.AddrPort) (string, bool) {
	t := h.byAddr[addr]
	if t == nil {
		return "", false
	}
	return t.base, true
}

// ServeHTTP answers r with a redirect to a ready backend, a redirect to the
// fallback URL, 503 when no backend is ready, 414 for a URL longer than
// MaxURLLength or 400 for a path with dot segments. It reads nothing but
// the request line, Cookie (cookie affinity), X-Forwarded-For (trusted
// peers only) and RemoteAddr.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var peer netip.Addr
	if h.needClient() {
		peer = h1.ParseHostAddr(r.RemoteAddr)
	}
	path, query, hasQuery := requestTarget(r)
	d := h.decide(r.Method, path, query, hasQuery, peer, r.Header["X-Forwarded-For"], r.Header["Cookie"])

	hdr := w.Header()
	hdr["Cache-Control"] = h.cacheControl
	if h.vary != nil {
		hdr["Vary"] = h.vary
	}
	switch {
	case d.fallback:
		hdr["Location"] = h.fallback
		w.WriteHeader(http.StatusFound)
		return
	case d.t == nil:
		if d.code == http.StatusServiceUnavailable {
			hdr["Retry-After"] = h.retryAfter
			hdr["Cache-Control"] = hdrNoStore
		}
		writeText(w, d.code, errorBody(d.code))
		return
	}
	if d.setCookie {
		hdr["Set-Cookie"] = d.t.setCookie
	}
	hdr["Location"] = locationHeader(d.t.base, path, query, hasQuery, d.n)
	if h.links > 0 {
		if l := h.duplicateLinks(d.snap, d.t, path, query, hasQuery); l != "" {
			hdr["Link"] = []string{l}
		}
	}
	w.WriteHeader(d.code)
}

// decision is a Handler's answer to one request, before rendering.
type decision struct {
	code      int                // status to send
	t         *target            // the backend redirected to; nil for errors and the fallback
	fallback  bool               // redirect to the fallback URL
	setCookie bool               // (re)set the affinity cookie for t
	n         int                // length of the Location to t
	snap      *balancer.Snapshot // the snapshot t was picked from
}

// needClient reports whether decisions depend on the client address.
func (h *Handler) needClient() bool { return h.affinity == AffinityClientIP || len(h.zones) > 0 }

// decide picks the answer to a request with the given method, escaped
// path, raw query, TCP peer (only read when needClient), X-Forwarded-For
// lines and Cookie lines. ServeHTTP and [Server] render it. It does not
// allocate.
func (h *Handler) decide(method, path, query string, hasQuery bool, peer netip.Addr, xff, cookies []string) decision {
	var client netip.Addr
	if h.needClient() {
		client = h.trusted.Client(peer, xff)
	}
	snap := h.pool.Snapshot()
	var t, had *target
	if h.affinity == AffinityCookie {
		had = h.cookieTarget(cookies)
		if had != nil && inReady(snap, had.backend.Addr) {
			t = had
		}
	}
	if t == nil {
		var info balancer.PickInfo
		if h.affinity == AffinityClientIP && client.IsValid() {
			info = balancer.WithKey(balancer.HashAddr(client))
		}
		t = h.pick(snap, client, info)
	}
	if t == nil {
		if h.fallback != nil {
			return decision{code: http.StatusFound, fallback: true}
		}
		return decision{code: http.StatusServiceUnavailable}
	}
	if hasDotSegment(path) {
		return decision{code: http.StatusBadRequest}
	}
	n := locationLen(t.base, path, query, hasQuery)
	if n > h.maxURL {
		return decision{code: http.StatusRequestURITooLong}
	}
	code := h.code
	if method != http.MethodGet && method != http.MethodHead {
		code = h.codeUnsafe
	}
	return decision{code: code, t: t, setCookie: h.affinity == AffinityCookie && t != had, n: n, snap: snap}
}

// errorBody returns the plain-text body of an error status.
func errorBody(code int) []byte {
	switch code {
	case http.StatusServiceUnavailable:
		return bodyNoBackend
	case http.StatusRequestURITooLong:
		return bodyTooLong
	case http.StatusBadRequest:
		return bodyBadPath
	}
	return nil
}

// pick chooses a target: from the client's zone when it has ready
// backends, else from the whole pool. It returns nil when nothing is
// ready.
func (h *Handler) pick(snap *balancer.Snapshot, client netip.Addr, info balancer.PickInfo) *target {
	if len(h.zones) > 0 && client.IsValid() {
		if zone := h.zoneOf(client); zone != "" {
			if p := h.view(snap).pickers[zone]; p != nil {
				if t := h.pickFrom(p, info); t != nil {
					return t
				}
			}
		}
	}
	return h.pickFrom(snap.Picker, info)
}

// pickFrom picks from p and maps the endpoint to its target, trying a few
// times if the pool holds members the handler has no target for.
func (h *Handler) pickFrom(p balancer.Picker, info balancer.PickInfo) *target {
	for range 3 {
		ep, err := p.Pick(info)
		if err != nil {
			return nil
		}
		if t := h.byAddr[ep.Addr()]; t != nil {
			ep.Start()
			ep.Done(nil, 0)
			return t
		}
		if h.noTargetLog.CompareAndSwap(false, true) {
			h.log.Warn("redirect: pool member has no target URL; skipping it", "backend", ep.Addr())
		}
		info.Key = balancer.Mix64(info.Key)
	}
	return nil
}

func writeText(w http.ResponseWriter, code int, body []byte) {
	hdr := w.Header()
	hdr["Content-Type"] = hdrTextPlain
	hdr["X-Content-Type-Options"] = hdrNoSniff
	delete(hdr, "Set-Cookie")
	w.WriteHeader(code)
	w.Write(body)
}

// inReady reports whether addr is in snap's ready set.
func inReady(snap *balancer.Snapshot, addr netip.AddrPort) bool {
	for _, w := range snap.Ready {
		if w.Endpoint.Addr() == addr {
			return true
		}
	}
	return false
}

// duplicateLinks returns the RFC 6249 Link value naming the resource on up
// to h.links other ready backends, or "".
func (h *Handler) duplicateLinks(snap *balancer.Snapshot, chosen *target, path, query string, hasQuery bool) string {
	var b strings.Builder
	n := 0
	for _, w := range snap.Ready {
		if n == h.links {
			break
		}
		t := h.byAddr[w.Endpoint.Addr()]
		if t == nil || t == chosen {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('<')
		writeLocation(&b, t.base, path, query, hasQuery)
		b.WriteString(">; rel=duplicate")
		n++
	}
	return b.String()
}

// parseBase validates a target or fallback URL and returns its base form
// (no trailing slash unless fallback) and, when the host is an IP literal
// or localhost, its address.
func parseBase(raw string, fallback bool) (string, netip.AddrPort, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", netip.AddrPort{}, errors.New("scheme must be http or https")
	case u.Host == "" || u.Opaque != "":
		return "", netip.AddrPort{}, errors.New("URL must be absolute with a host")
	case u.User != nil:
		return "", netip.AddrPort{}, errors.New("URL must not carry user info")
	case u.Fragment != "" || (!fallback && (u.RawQuery != "" || u.ForceQuery)):
		return "", netip.AddrPort{}, errors.New("URL must not have a query or fragment")
	}
	if strings.ContainsAny(raw, "\r\n\t ") {
		return "", netip.AddrPort{}, errors.New("URL contains white space")
	}
	path := u.EscapedPath()
	if hasDotSegment(path) {
		return "", netip.AddrPort{}, errors.New("URL path has dot segments")
	}
	base := u.Scheme + "://" + u.Host
	if fallback {
		if u.RawQuery != "" {
			path += "?" + u.RawQuery
		}
		if path == "" {
			path = "/"
		}
		return base + path, netip.AddrPort{}, nil
	}
	base += strings.TrimRight(path, "/")

	var port uint16 = 80
	if u.Scheme == "https" {
		port = 443
	}
	if ps := u.Port(); ps != "" {
		p, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || p == 0 {
			return "", netip.AddrPort{}, fmt.Errorf("bad port %q", ps)
		}
		port = uint16(p)
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return base, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return base, netip.AddrPort{}, nil // a name: Addr must be given
	}
	return base, netip.AddrPortFrom(a, port), nil
}

// cookieTarget returns the target named by the affinity cookie in the
// Cookie header lines, or nil. It does not allocate.
func (h *Handler) cookieTarget(lines []string) *target {
	for _, line := range lines {
		for val, rest, ok := h1.CutCookie(line, h.cookieName); ok; val, rest, ok = h1.CutCookie(rest, h.cookieName) {
			if len(val) != h1.TokenLen {
				continue
			}
			if t := h.byToken[val]; t != nil {
				return t
			}
		}
	}
	return nil
}

// defaultBuilder returns the policy used when Config.Builder is nil.
func defaultBuilder(cfg Config) balancer.Builder {
	if cfg.Affinity == AffinityClientIP {
		return maglev.Builder{}
	}
	for _, t := range cfg.Backends {
		if max(t.Weight, 1) != max(cfg.Backends[0].Weight, 1) {
			return weighted.Builder{}
		}
	}
	return roundrobin.Builder{}
}
