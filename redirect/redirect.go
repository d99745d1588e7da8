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
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/internal/h1"
)

// MetaURL is the member metadata key (balancer.Backend.Meta) holding a
// backend's base URL: scheme (http or https), host, an optional port and
// an optional path prefix, e.g. "http://mirror-1.example/pub". Redirects
// append the request's path and query to it. User info, query, fragment
// and dot segments are invalid. A member without it is redirected to
// "http://<addr>".
const MetaURL = "url"

// Defaults for [Config] fields left zero.
const (
	DefaultRetryAfter   = 5 * time.Second
	DefaultMaxURLLength = 8192
)

// ZoneRule maps clients whose address is in Prefix to Zone. The longest
// matching prefix wins.
type ZoneRule struct {
	Prefix netip.Prefix
	Zone   string
}

// Config configures a [Handler]. Only Pool is required.
type Config struct {
	// Pool holds the backends: each member's address is its identity,
	// its metadata MetaURL the base URL clients are sent to, its Zone
	// what ZoneRule matches. Required. Change the backends or their URLs
	// at runtime with Pool.Set/Add/Remove: the next request sees the new
	// set. Health comes from whoever drives the pool (health.Checker's
	// Follow). The handler never closes the pool.
	Pool *balancer.Pool
	// Key derives the pick key from the request (see balancer.Key): with
	// a hash policy in the pool (Maglev, ring hash, rendezvous) a client,
	// user or object then stays on one backend while it is ready.
	// Client-address affinity is Key "client" (or "client/24"). The zero
	// Key means none: the pool's policy picks freely.
	Key balancer.Key
	// Builder is the policy of the per-zone pickers (see Zones). Nil
	// means Maglev when Key is set, smooth weighted round robin otherwise.
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

	// StickyCookie, when set, makes sessions sticky with a cookie of this
	// name naming the chosen backend in an opaque, HMAC-signed form.
	// While that backend is ready, requests carrying the cookie go back
	// to it, whatever Key says; otherwise the handler picks again and
	// re-sets the cookie. Empty means no cookie.
	StickyCookie string
	// CookieKey signs sticky cookies. Replicas that must honour each
	// other's cookies, or a handler that must honour cookies across
	// restarts, share a key of at least 16 bytes. Nil means a random key.
	CookieKey []byte
	// CookieMaxAge is the cookie's lifetime. Zero means a session cookie.
	CookieMaxAge time.Duration
	// CookieSecure adds the Secure attribute to the cookie.
	CookieSecure bool

	// Zones maps client address ranges to zones. A client in a zone is
	// sent to a ready backend whose member Zone is that zone when there
	// is one, and to any ready backend otherwise.
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
	// member whose MetaURL is invalid), with the pool's name. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Handler is an [http.Handler] that redirects each request to a ready
// backend. It is safe for concurrent use. ServeHTTP never blocks beyond
// writing the response, reads no request body and allocates one string
// per plain redirect (the Location header value).
type Handler struct {
	pool    *balancer.Pool
	key     balancer.Key
	builder balancer.Builder

	code, codeUnsafe int
	cacheControl     []string
	vary             []string

	cookieName string
	signer     *h1.CookieSigner // nil without StickyCookie

	zones []ZoneRule

	mu       sync.Mutex                 // guards views' building, cache and reported
	view     atomic.Pointer[view]       // of the latest snapshot seen
	cache    map[netip.AddrPort]*target // targets by member, reused across views
	reported map[netip.AddrPort]string  // members reported for an invalid URL, with it

	links      int
	fallback   []string
	retryAfter []string
	trusted    h1.Trusted
	maxURL     int
	log        *slog.Logger
}

// target is the handler's view of one member with a valid base URL.
type target struct {
	addr      netip.AddrPort
	url       string   // the member's MetaURL as given ("" for the default)
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
// missing Pool, an unsupported Code, a bad FallbackURL, an invalid cookie
// name or a short CookieKey. Members' URLs are read from the pool as
// requests come: an invalid one is logged once and never redirected to.
func New(cfg Config) (*Handler, error) {
	if cfg.Pool == nil {
		return nil, errors.New("redirect: Config.Pool is required")
	}
	h := &Handler{
		pool:     cfg.Pool,
		key:      cfg.Key,
		builder:  cfg.Builder,
		links:    cfg.DuplicateLinks,
		maxURL:   cfg.MaxURLLength,
		log:      cfg.Logger,
		cache:    map[netip.AddrPort]*target{},
		reported: map[netip.AddrPort]string{},
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.maxURL <= 0 {
		h.maxURL = DefaultMaxURLLength
	}
	if h.builder == nil {
		h.builder = weighted.Builder{}
		if !cfg.Key.IsZero() {
			h.builder = maglev.Builder{}
		}
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
		base, err := parseBase(cfg.FallbackURL, true)
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

	if cfg.StickyCookie != "" {
		if !h1.ValidCookieName(cfg.StickyCookie) {
			return nil, fmt.Errorf("redirect: invalid StickyCookie name %q", cfg.StickyCookie)
		}
		signer, err := h1.NewCookieSigner("redirect", cfg.CookieKey, cfg.CookieMaxAge, cfg.CookieSecure)
		if err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
		h.cookieName, h.signer, h.vary = cfg.StickyCookie, signer, hdrVaryCookie
	}
	return h, nil
}

// Pool returns the pool the handler picks from.
func (h *Handler) Pool() *balancer.Pool { return h.pool }

// BaseURL returns the base URL redirects to the member addr start with,
// and whether addr is a member with a valid base URL.
func (h *Handler) BaseURL(addr netip.AddrPort) (string, bool) {
	t := h.viewOf(h.pool.Snapshot()).byAddr[addr]
	if t == nil {
		return "", false
	}
	return t.base, true
}

// ServeHTTP answers r with a redirect to a ready backend, a redirect to the
// fallback URL, 503 when no backend is ready, 414 for a URL longer than
// MaxURLLength or 400 for a path with dot segments. It reads nothing but
// the request line, Cookie (sticky cookie), X-Forwarded-For (trusted
// peers only), RemoteAddr and what Key names.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var client netip.Addr
	if h.needClient() {
		client = h.trusted.Client(h1.ParseHostAddr(r.RemoteAddr), r.Header["X-Forwarded-For"])
	}
	var kr balancer.KeyRequest
	if !h.key.IsZero() {
		kr = balancer.HTTPRequest(r, client)
	}
	path, query, hasQuery := requestTarget(r)
	d := h.decide(r.Method, path, query, hasQuery, client, r.Header["Cookie"], kr)

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
		if l := h.duplicateLinks(d.snap, d.v, d.t, path, query, hasQuery); l != "" {
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
	setCookie bool               // (re)set the sticky cookie for t
	n         int                // length of the Location to t
	snap      *balancer.Snapshot // the snapshot t was picked from
	v         *view              // the handler's view of snap
}

// needClient reports whether decisions depend on the client address: a
// key (which falls back to it) or zones.
func (h *Handler) needClient() bool { return !h.key.IsZero() || len(h.zones) > 0 }

// decide picks the answer to a request with the given method, escaped
// path, raw query, client (only read when needClient), Cookie lines and
// key source (nil when Key is zero). ServeHTTP and [Server] render it. It
// does not allocate.
func (h *Handler) decide(method, path, query string, hasQuery bool, client netip.Addr, cookies []string, kr balancer.KeyRequest) decision {
	snap := h.pool.Snapshot()
	v := h.viewOf(snap)
	var t, had *target
	if h.signer != nil {
		had = v.cookieTarget(h.cookieName, cookies)
		if had != nil && inReady(snap, had.addr) {
			t = had
		}
	}
	if t == nil {
		var info balancer.PickInfo
		if kr != nil {
			info = h.key.Request(kr)
		}
		t = h.pick(snap, v, client, info)
	}
	if t == nil {
		if h.fallback != nil {
			return decision{code: http.StatusFound, fallback: true}
		}
		return decision{code: http.StatusServiceUnavailable}
	}
	if h1.HasDotSegment(path) {
		return decision{code: http.StatusBadRequest}
	}
	n := h1.LocationLen(t.base, path, query, hasQuery)
	if n > h.maxURL {
		return decision{code: http.StatusRequestURITooLong}
	}
	code := h.code
	if method != http.MethodGet && method != http.MethodHead {
		code = h.codeUnsafe
	}
	return decision{code: code, t: t, setCookie: h.signer != nil && t != had, n: n, snap: snap, v: v}
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
func (h *Handler) pick(snap *balancer.Snapshot, v *view, client netip.Addr, info balancer.PickInfo) *target {
	if len(h.zones) > 0 && client.IsValid() {
		if zone := h.zoneOf(client); zone != "" {
			if p := v.pickers[zone]; p != nil {
				if t := v.pickFrom(p, nil, info); t != nil {
					return t
				}
			}
		}
	}
	return v.pickFrom(snap.Picker, snap.Ready, info)
}

// pickFrom picks from p and maps the endpoint to its target. A pick that
// lands on a member without a valid URL is made again with the key
// rehashed, a few times, and then the first such member of ready is
// taken, so such members are never named.
func (v *view) pickFrom(p balancer.Picker, ready []balancer.Weighted, info balancer.PickInfo) *target {
	for range 3 {
		ep, err := p.Pick(info)
		if err != nil {
			return nil
		}
		if t := v.byAddr[ep.Addr()]; t != nil {
			ep.Start()
			ep.Done(nil, 0)
			return t
		}
		info.Key = balancer.Mix64(info.Key)
	}
	for _, w := range ready {
		if t := v.byAddr[w.Endpoint.Addr()]; t != nil {
			w.Endpoint.Start()
			w.Endpoint.Done(nil, 0)
			return t
		}
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
func (h *Handler) duplicateLinks(snap *balancer.Snapshot, v *view, chosen *target, path, query string, hasQuery bool) string {
	var b strings.Builder
	n := 0
	for _, w := range snap.Ready {
		if n == h.links {
			break
		}
		t := v.byAddr[w.Endpoint.Addr()]
		if t == nil || t == chosen {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('<')
		var scratch [256]byte
		b.Write(h1.AppendLocation(scratch[:0], t.base, path, query, hasQuery))
		b.WriteString(">; rel=duplicate")
		n++
	}
	return b.String()
}

// parseBase validates a base or fallback URL and returns its base form
// (no trailing slash unless fallback).
func parseBase(raw string, fallback bool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", errors.New("scheme must be http or https")
	case u.Host == "" || u.Opaque != "":
		return "", errors.New("URL must be absolute with a host")
	case u.User != nil:
		return "", errors.New("URL must not carry user info")
	case u.Fragment != "" || (!fallback && (u.RawQuery != "" || u.ForceQuery)):
		return "", errors.New("URL must not have a query or fragment")
	}
	if strings.ContainsAny(raw, "\r\n\t ") {
		return "", errors.New("URL contains white space")
	}
	if ps := u.Port(); ps != "" {
		if p, err := strconv.ParseUint(ps, 10, 16); err != nil || p == 0 {
			return "", fmt.Errorf("bad port %q", ps)
		}
	}
	path := u.EscapedPath()
	if h1.HasDotSegment(path) {
		return "", errors.New("URL path has dot segments")
	}
	base := u.Scheme + "://" + u.Host
	if fallback {
		if u.RawQuery != "" {
			path += "?" + u.RawQuery
		}
		if path == "" {
			path = "/"
		}
		return base + path, nil
	}
	return base + strings.TrimRight(path, "/"), nil
}

// cookieTarget returns the target named by the sticky cookie name in
// the Cookie header lines, or nil. It does not allocate.
func (v *view) cookieTarget(name string, lines []string) *target {
	for _, line := range lines {
		for val, rest, ok := h1.CutCookie(line, name); ok; val, rest, ok = h1.CutCookie(rest, name) {
			if len(val) != h1.TokenLen {
				continue
			}
			if t := v.byToken[val]; t != nil {
				return t
			}
		}
	}
	return nil
}
