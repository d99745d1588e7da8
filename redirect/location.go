package redirect

import (
	"net/http"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/internal/h1"
)

// requestTarget returns the parts of r's target a Location carries: the
// escaped path (never empty) and the raw query. It uses r.URL only, so an
// absolute-form request target contributes its path and query and never
// its host.
func requestTarget(r *http.Request) (path, query string, hasQuery bool) {
	if r.URL == nil {
		return "/", "", false
	}
	path = r.URL.EscapedPath()
	if path == "" || path == "*" {
		path = "/"
	}
	return path, r.URL.RawQuery, r.URL.RawQuery != "" || r.URL.ForceQuery
}

// buildLocation returns the Location h1.AppendLocation appends for these
// parts; n is h1.LocationLen's result. The string is the only
// allocation.
func buildLocation(base, path, query string, hasQuery bool, n int) string {
	buf := h1.AppendLocation(make([]byte, 0, n), base, path, query, hasQuery)
	return unsafe.String(unsafe.SliceData(buf), len(buf))
}

// locationHeader returns a one-element header value holding the Location
// (see buildLocation). For the usual lengths the slice and the string's
// bytes share one allocation.
func locationHeader(base, path, query string, hasQuery bool, n int) []string {
	switch {
	case n <= len(locSmall{}.buf):
		v := new(locSmall)
		return fillLocation(v.hdr[:], v.buf[:0], base, path, query, hasQuery)
	case n <= len(locMedium{}.buf):
		v := new(locMedium)
		return fillLocation(v.hdr[:], v.buf[:0], base, path, query, hasQuery)
	case n <= len(locLarge{}.buf):
		v := new(locLarge)
		return fillLocation(v.hdr[:], v.buf[:0], base, path, query, hasQuery)
	}
	return []string{buildLocation(base, path, query, hasQuery, n)}
}

// Size classes for locationHeader: 128, 256 and 512 bytes in all.
type (
	locSmall struct {
		hdr [1]string
		buf [128 - 16]byte
	}
	locMedium struct {
		hdr [1]string
		buf [256 - 16]byte
	}
	locLarge struct {
		hdr [1]string
		buf [512 - 16]byte
	}
)

// fillLocation writes the Location into buf (whose capacity suffices),
// points hdr[0] at it and returns hdr. buf is never written again, so the
// string is immutable as Go requires.
func fillLocation(hdr []string, buf []byte, base, path, query string, hasQuery bool) []string {
	buf = h1.AppendLocation(buf, base, path, query, hasQuery)
	hdr[0] = unsafe.String(unsafe.SliceData(buf), len(buf))
	return hdr
}

// zoneOf returns the zone of the longest rule containing a, or "".
func (h *Handler) zoneOf(a netip.Addr) string {
	for _, z := range h.zones {
		if z.Prefix.Contains(a) {
			return z.Zone
		}
	}
	return ""
}

// view is the handler's reading of one pool snapshot: the target of
// every member with a valid base URL, the sticky-cookie tokens and one
// picker per zone. It is immutable; requests between two snapshots share
// one view and do not allocate.
type view struct {
	snap    *balancer.Snapshot
	byAddr  map[netip.AddrPort]*target
	byToken map[string]*target
	pickers map[string]balancer.Picker
}

// viewOf returns the view of snap, building it the first time a snapshot
// is seen (a view of a newer snapshot serves older ones).
func (h *Handler) viewOf(snap *balancer.Snapshot) *view {
	if v := h.view.Load(); v != nil && (v.snap == snap || v.snap.Version > snap.Version) {
		return v
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if v := h.view.Load(); v != nil && (v.snap == snap || v.snap.Version > snap.Version) {
		return v
	}
	v := &view{
		snap:    snap,
		byAddr:  make(map[netip.AddrPort]*target, len(snap.Members)),
		pickers: make(map[string]balancer.Picker),
	}
	if h.signer != nil {
		v.byToken = make(map[string]*target, len(snap.Members))
	}
	cache := make(map[netip.AddrPort]*target, len(snap.Members))
	for _, ep := range snap.Members {
		t := h.targetOf(ep)
		if t == nil {
			continue
		}
		cache[t.addr] = t
		v.byAddr[t.addr] = t
		if v.byToken != nil {
			v.byToken[t.token] = t
		}
	}
	h.cache = cache
	for addr := range h.reported {
		if !slices.ContainsFunc(snap.Members, func(ep *balancer.Endpoint) bool { return ep.Addr() == addr }) {
			delete(h.reported, addr) // a member that left: report it again if it comes back
		}
	}

	byZone := make(map[string][]balancer.Weighted)
	for _, w := range snap.Ready {
		if z := w.Endpoint.Zone(); z != "" && v.byAddr[w.Endpoint.Addr()] != nil {
			byZone[z] = append(byZone[z], w)
		}
	}
	for _, rule := range h.zones {
		if _, done := v.pickers[rule.Zone]; done {
			continue
		}
		if ready := byZone[rule.Zone]; len(ready) > 0 {
			v.pickers[rule.Zone] = h.builder.Build(ready)
		}
	}
	h.view.Store(v)
	return v
}

// targetOf returns the target of member ep, reusing the previous view's
// when its URL did not change, or nil (reported once per URL) when its
// MetaURL is invalid. h.mu is held.
func (h *Handler) targetOf(ep *balancer.Endpoint) *target {
	addr, raw := ep.Addr(), ep.Meta(MetaURL)
	if t := h.cache[addr]; t != nil && t.url == raw {
		return t
	}
	u := raw
	if u == "" {
		u = "http://" + addr.String()
	}
	base, err := parseBase(u, false)
	if err != nil {
		if old, seen := h.reported[addr]; !seen || old != raw {
			h.reported[addr] = raw
			h.log.Warn("redirect: member has an invalid base URL; it is never named in a redirect",
				"pool", h.pool.Name(), "backend", addr, "url", raw, "err", err)
		}
		return nil
	}
	delete(h.reported, addr)
	t := &target{addr: addr, url: raw, base: base}
	if h.signer != nil {
		t.token = h.signer.Token(addr)
		t.setCookie = []string{h.signer.SetCookie(h.cookieName, t.token)}
	}
	return t
}
