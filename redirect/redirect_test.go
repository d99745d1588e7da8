package redirect

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/internal/h1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	redirA = tgt{URL: "http://127.0.0.1:8081", Zone: "eu"}
	redirB = tgt{URL: "http://127.0.0.2:8082/mirror/", Zone: "us"}
	redirC = tgt{URL: "https://[::1]:8443/p", Zone: "us"}
)

// redirCookie is the sticky cookie of the tests.
const redirCookie = "lbkit_backend"

// tgt is a test backend: a pool member whose address is Addr or, when
// zero, the URL's host (an IP literal or localhost) and port.
type tgt struct {
	URL    string
	Addr   netip.AddrPort
	Weight uint32
	Zone   string
}

// redirPool makes a pool of targets (round robin, or smooth weighted
// round robin when weights differ), each member's MetaURL its URL. It is
// closed at cleanup.
func redirPool(t testing.TB, targets []tgt) *balancer.Pool {
	t.Helper()
	return redirPoolOf(t, nil, targets)
}

func redirPoolOf(t testing.TB, b balancer.Builder, targets []tgt) *balancer.Pool {
	t.Helper()
	bs := make([]balancer.Backend, len(targets))
	for i, tg := range targets {
		addr := tg.Addr
		if !addr.IsValid() {
			u, err := url.Parse(tg.URL)
			require.NoError(t, err)
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			if u.Port() != "" {
				port = u.Port()
			}
			host := u.Hostname()
			if host == "localhost" {
				host = "127.0.0.1"
			}
			addr, err = netip.ParseAddrPort(net.JoinHostPort(host, port))
			require.NoError(t, err)
		}
		bs[i] = balancer.Backend{Addr: addr, Weight: tg.Weight, Zone: tg.Zone, Meta: map[string]string{MetaURL: tg.URL}}
		if b == nil && max(tg.Weight, 1) != max(targets[0].Weight, 1) {
			b = weighted.Builder{}
		}
	}
	if b == nil {
		b = roundrobin.Builder{}
	}
	pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: b})
	require.NoError(t, pool.Set(bs))
	t.Cleanup(func() { pool.Close() })
	return pool
}

func redirNew(t *testing.T, cfg Config) *Handler {
	t.Helper()
	if cfg.Pool == nil {
		var b balancer.Builder
		if !cfg.Key.IsZero() {
			b = maglev.Builder{}
		}
		cfg.Pool = redirPoolOf(t, b, []tgt{redirA, redirB, redirC})
	}
	h, err := New(cfg)
	require.NoError(t, err)
	return h
}

func redirServe(h http.Handler, method, target string, mod ...func(*http.Request)) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for _, f := range mod {
		f(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no pool", Config{}, "Pool is required"},
		{"code", Config{Pool: redirPool(t, []tgt{redirA}), Code: 200}, "not a redirect status"},
		{"short key", Config{Pool: redirPool(t, []tgt{redirA}), StickyCookie: redirCookie, CookieKey: []byte("short")}, "at least 16"},
		{"cookie name", Config{Pool: redirPool(t, []tgt{redirA}), StickyCookie: "a b"}, "StickyCookie"},
		{"fallback", Config{Pool: redirPool(t, []tgt{redirA}), FallbackURL: "javascript:alert(1)"}, "FallbackURL"},
		{"zone rule", Config{Pool: redirPool(t, []tgt{redirA}), Zones: []ZoneRule{{Zone: "eu"}}}, "ZoneRule"},
		{"negative", Config{Pool: redirPool(t, []tgt{redirA}), MaxAge: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), "redirect: "), err.Error())
		})
	}
	t.Run("host name", func(t *testing.T) {
		addr := netip.MustParseAddrPort("198.18.0.10:80")
		h := redirNew(t, Config{Pool: redirPool(t, []tgt{{URL: "http://mirror.example", Addr: addr}})})
		base, ok := h.BaseURL(addr)
		require.True(t, ok)
		assert.Equal(t, "http://mirror.example", base)
	})
	t.Run("default URL", func(t *testing.T) {
		pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
		t.Cleanup(func() { pool.Close() })
		require.NoError(t, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort("[2001:db8::1]:8080")}))
		h := redirNew(t, Config{Pool: pool})
		assert.Equal(t, "http://[2001:db8::1]:8080/x", redirServe(h, http.MethodGet, "/x").Header().Get("Location"))
	})
}

// TestInvalidMemberURL: members whose MetaURL is invalid are reported
// once, with the pool's name, and never named in a redirect; the others
// are served.
func TestInvalidMemberURL(t *testing.T) {
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	bad := []tgt{
		{URL: "ftp://127.0.0.1", Addr: netip.MustParseAddrPort("198.18.0.1:80")},
		{URL: "/x", Addr: netip.MustParseAddrPort("198.18.0.2:80")},
		{URL: "http://u:p@127.0.0.1", Addr: netip.MustParseAddrPort("198.18.0.3:80")},
		{URL: "http://127.0.0.1/?a=b", Addr: netip.MustParseAddrPort("198.18.0.4:80")},
		{URL: "http://127.0.0.1/#f", Addr: netip.MustParseAddrPort("198.18.0.5:80")},
		{URL: "http://127.0.0.1/a/../b", Addr: netip.MustParseAddrPort("198.18.0.6:80")},
		{URL: "http://127.0.0.1:0", Addr: netip.MustParseAddrPort("198.18.0.7:80")},
	}
	for _, key := range []string{"", "client"} {
		logs.Reset()
		var b balancer.Builder
		if key != "" {
			b = maglev.Builder{}
		}
		h := redirNew(t, Config{Pool: redirPoolOf(t, b, append([]tgt{redirA}, bad...)), Key: balancer.MustParseKey(key), Logger: log})
		for i := range 200 {
			w := redirServe(h, http.MethodGet, "/", func(r *http.Request) { r.RemoteAddr = fmt.Sprintf("192.0.2.%d:1", i) })
			require.Equal(t, http.StatusFound, w.Code)
			require.Equal(t, "http://127.0.0.1:8081/", w.Header().Get("Location"))
		}
		assert.Equal(t, len(bad), strings.Count(logs.String(), "invalid base URL"), logs.String())
		assert.Equal(t, len(bad), strings.Count(logs.String(), "pool=mirrors"), logs.String())
		for _, tg := range bad {
			_, ok := h.BaseURL(tg.Addr)
			assert.False(t, ok, tg.URL)
		}

		// A member that leaves and comes back with the same bad URL is
		// reported again.
		pool := h.Pool()
		require.True(t, pool.Remove(bad[0].Addr))
		redirServe(h, http.MethodGet, "/")
		require.NoError(t, pool.Add(balancer.Backend{Addr: bad[0].Addr, Meta: map[string]string{MetaURL: bad[0].URL}}))
		redirServe(h, http.MethodGet, "/")
		assert.Equal(t, len(bad)+1, strings.Count(logs.String(), "invalid base URL"), logs.String())
	}
}

func TestStatusByMethod(t *testing.T) {
	tests := []struct {
		code   int
		method string
		want   int
	}{
		{0, http.MethodGet, 302},
		{0, http.MethodHead, 302},
		{0, http.MethodPost, 307},
		{0, http.MethodPut, 307},
		{0, http.MethodDelete, 307},
		{301, http.MethodGet, 301},
		{301, http.MethodPost, 308},
		{303, http.MethodGet, 303},
		{303, http.MethodPost, 303},
		{307, http.MethodGet, 307},
		{308, http.MethodPatch, 308},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.want)+"/"+tt.method, func(t *testing.T) {
			h := redirNew(t, Config{Code: tt.code})
			w := redirServe(h, tt.method, "/x")
			assert.Equal(t, tt.want, w.Code)
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			assert.Empty(t, w.Header().Get("Vary"))
			assert.Empty(t, w.Body.String())
		})
	}
}

func TestMaxAge(t *testing.T) {
	h := redirNew(t, Config{MaxAge: 90 * time.Second})
	w := redirServe(h, http.MethodGet, "/")
	assert.Equal(t, "private, max-age=90", w.Header().Get("Cache-Control"))
}

// redirBases are the configured base URLs of redirA, redirB, redirC.
var redirBases = []string{"http://127.0.0.1:8081", "http://127.0.0.2:8082/mirror", "https://[::1]:8443/p"}

func redirWithinBase(loc string) bool { return redirBaseOf(loc) != "" }

// redirBaseOf returns the configured base URL that loc starts with
// (followed by "/"), or "".
func redirBaseOf(loc string) string {
	for _, b := range redirBases {
		if strings.HasPrefix(loc, b+"/") {
			return b
		}
	}
	return ""
}

func TestLocation(t *testing.T) {
	h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirB})})
	const base = "http://127.0.0.2:8082/mirror"
	tests := []struct {
		name string
		url  *url.URL
		want string // Location; "" means only the safety properties
		code int
	}{
		{"root", &url.URL{Path: "/"}, base + "/", 302},
		{"path and query", &url.URL{Path: "/a/b", RawQuery: "x=1&y=%20"}, base + "/a/b?x=1&y=%20", 302},
		{"force query", &url.URL{Path: "/a", ForceQuery: true}, base + "/a?", 302},
		{"escaped path kept", &url.URL{Path: "/a b/ü", RawPath: "/a%20b/%C3%BC"}, base + "/a%20b/%C3%BC", 302},
		{"path escaped", &url.URL{Path: "/a b\"<>"}, base + "/a%20b%22%3C%3E", 302},
		{"protocol relative", &url.URL{Path: "//evil.example/x"}, base + "/evil.example/x", 302},
		{"many slashes", &url.URL{Path: "////evil.example"}, base + "/evil.example", 302},
		{"backslash", &url.URL{Path: "/\\evil.example"}, base + "/%5Cevil.example", 302},
		{"crlf in path", &url.URL{Path: "/\r\nSet-Cookie: x=1"}, base + "/%0D%0ASet-Cookie:%20x=1", 302},
		{"encoded crlf", &url.URL{Path: "/\r\nSet-Cookie:x", RawPath: "/%0d%0aSet-Cookie:x"}, base + "/%0d%0aSet-Cookie:x", 302},
		{"crlf in query", &url.URL{Path: "/", RawQuery: "a\r\nLocation: http://evil"}, base + "/?a%0D%0ALocation:%20http://evil", 302},
		{"fragment char in query", &url.URL{Path: "/", RawQuery: "a#b"}, base + "/?a%23b", 302},
		{"absolute form", &url.URL{Scheme: "http", Host: "evil.example", Path: "/x"}, base + "/x", 302},
		{"absolute form no path", &url.URL{Scheme: "http", Host: "evil.example"}, base + "/", 302},
		{"asterisk", &url.URL{Path: "*"}, base + "/", 302},
		{"opaque", &url.URL{Scheme: "mailto", Opaque: "x@evil.example"}, base + "/", 302},
		{"dot dot", &url.URL{Path: "/a/../../etc"}, "", 400},
		{"encoded dot dot", &url.URL{Path: "/a/../x", RawPath: "/a/%2E%2e/x"}, "", 400},
		{"dot", &url.URL{Path: "/./x"}, "", 400},
		{"dots in names", &url.URL{Path: "/a.b/...x/.../..."}, base + "/a.b/...x/.../...", 302},
		{"huge", &url.URL{Path: "/" + strings.Repeat("a", DefaultMaxURLLength)}, "", 414},
		{"huge escaped", &url.URL{Path: "/" + strings.Repeat("\n", DefaultMaxURLLength/3)}, "", 414},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.URL = tt.url
			r.Host = "evil.example"
			r.Header.Set("X-Forwarded-Host", "evil.example")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			require.Equal(t, tt.code, w.Code)
			loc := w.Header().Get("Location")
			if tt.code != 302 {
				assert.Empty(t, loc)
				return
			}
			assert.Equal(t, tt.want, loc)
			assert.True(t, strings.HasPrefix(loc, base+"/"))
			assert.NotContains(t, loc, "\r")
			assert.NotContains(t, loc, "\n")
			path, _, _ := strings.Cut(loc[len(base):], "?")
			assert.NotContains(t, path, "//")
		})
	}
}

func TestNoBackend(t *testing.T) {
	t.Run("503", func(t *testing.T) {
		h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA}), RetryAfter: 1500 * time.Millisecond, StickyCookie: redirCookie})
		h.Pool().SetHealthy(netip.MustParseAddrPort("127.0.0.1:8081"), false)
		w := redirServe(h, http.MethodGet, "/x")
		assert.Equal(t, http.StatusServiceUnavailable, w.Code)
		assert.Equal(t, "2", w.Header().Get("Retry-After"))
		assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
		assert.Empty(t, w.Header().Get("Location"))
		assert.Empty(t, w.Header().Get("Set-Cookie"))
	})
	t.Run("fallback", func(t *testing.T) {
		h := redirNew(t, Config{Pool: redirPool(t, []tgt{redirA}), FallbackURL: "https://status.example/down?from=lb"})
		h.Pool().SetDraining(netip.MustParseAddrPort("127.0.0.1:8081"), true)
		w := redirServe(h, http.MethodPost, "/x?y")
		assert.Equal(t, http.StatusFound, w.Code)
		assert.Equal(t, "https://status.example/down?from=lb", w.Header().Get("Location"))
		assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
	})
}

func TestCookieAffinity(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	h := redirNew(t, Config{StickyCookie: redirCookie, CookieKey: key, CookieMaxAge: time.Hour, CookieSecure: true})

	w := redirServe(h, http.MethodGet, "/a")
	require.Equal(t, 302, w.Code)
	assert.Equal(t, "Cookie", w.Header().Get("Vary"))
	sc := w.Header().Get("Set-Cookie")
	require.NotEmpty(t, sc)
	assert.Contains(t, sc, "; Max-Age=3600; HttpOnly; SameSite=Lax; Secure")
	cookies := w.Result().Cookies()
	require.Len(t, cookies, 1)
	c := cookies[0]
	assert.Equal(t, redirCookie, c.Name)
	first := w.Header().Get("Location")
	for _, b := range []string{"127.0.0.1", "8081", "127.0.0.2", "::1"} {
		assert.NotContains(t, c.Value, b, "cookie must be opaque")
	}

	withCookie := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Add("Cookie", "other=1; "+redirCookie+"="+v+"; z=2") }
	}
	for range 10 {
		w := redirServe(h, http.MethodGet, "/a", withCookie(c.Value))
		assert.Equal(t, first, w.Header().Get("Location"), "cookie holds while the backend is ready")
		assert.Empty(t, w.Header().Get("Set-Cookie"), "no need to re-set a valid cookie")
	}

	// A forged or foreign cookie is ignored and replaced.
	forged := strings.Repeat("A", len(c.Value))
	w = redirServe(h, http.MethodGet, "/a", withCookie(forged))
	assert.NotEmpty(t, w.Header().Get("Set-Cookie"))
	other, err := New(Config{Pool: redirPool(t, []tgt{redirA, redirB, redirC}), StickyCookie: redirCookie, CookieKey: []byte("another key, 16+ bytes")})
	require.NoError(t, err)
	hv := h.viewOf(h.Pool().Snapshot())
	for _, tg := range other.viewOf(other.Pool().Snapshot()).byAddr {
		assert.Nil(t, hv.byToken[tg.token], "a cookie signed with another key must not match")
	}

	// The backend fails: the same cookie moves to a ready one, re-set.
	var addr netip.AddrPort
	for a, tg := range hv.byAddr {
		if strings.HasPrefix(first, tg.base+"/") {
			addr = a
		}
	}
	require.True(t, h.Pool().SetHealthy(addr, false))
	w = redirServe(h, http.MethodGet, "/a", withCookie(c.Value))
	assert.NotEqual(t, first, w.Header().Get("Location"))
	moved := w.Result().Cookies()
	require.Len(t, moved, 1)
	assert.NotEqual(t, c.Value, moved[0].Value)
	second := w.Header().Get("Location")
	w = redirServe(h, http.MethodGet, "/a", withCookie(moved[0].Value))
	assert.Equal(t, second, w.Header().Get("Location"))

	// Recovery does not move clients back: they stay where they are.
	h.Pool().SetHealthy(addr, true)
	w = redirServe(h, http.MethodGet, "/a", withCookie(moved[0].Value))
	assert.Equal(t, second, w.Header().Get("Location"))
}

func TestClientIPAffinity(t *testing.T) {
	h := redirNew(t, Config{Key: balancer.MustParseKey("client")})
	from := func(addr string) func(*http.Request) { return func(r *http.Request) { r.RemoteAddr = addr } }
	seen := map[string]bool{}
	for i := range 50 {
		client := netip.AddrFrom4([4]byte{198, 18, byte(i), 1}).String()
		first := redirServe(h, http.MethodGet, "/", from(client+":1000")).Header().Get("Location")
		again := redirServe(h, http.MethodGet, "/", from(client+":2000")).Header().Get("Location")
		assert.Equal(t, first, again, "same client, other port, same backend")
		seen[first] = true
	}
	assert.Len(t, seen, 3, "clients spread over every backend")
}

func TestClientAddr(t *testing.T) {
	h := redirNew(t, Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128"),
	}})
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"untrusted peer ignores header", "203.0.113.7:1234", []string{"198.51.100.1"}, "203.0.113.7"},
		{"trusted peer", "10.1.1.1:1234", []string{"198.51.100.1"}, "198.51.100.1"},
		{"rightmost untrusted", "10.1.1.1:1234", []string{"1.1.1.1, 198.51.100.1, 10.2.2.2"}, "198.51.100.1"},
		{"spoofed left ignored", "10.1.1.1:1234", []string{"6.6.6.6", "198.51.100.2 , 10.0.0.9"}, "198.51.100.2"},
		{"all trusted", "10.1.1.1:1234", []string{"10.0.0.3, 10.0.0.4"}, "10.0.0.3"},
		{"garbage stops walk", "10.1.1.1:1234", []string{"198.51.100.1, bogus, 10.0.0.5"}, "10.0.0.5"},
		{"no header", "10.1.1.1:1234", nil, "10.1.1.1"},
		{"ipv6 peer", "[::1]:99", []string{"2001:db8::1"}, "2001:db8::1"},
		{"hop with port", "10.1.1.1:1234", []string{"[2001:db8::2]:443"}, "2001:db8::2"},
		{"mapped", "[::ffff:10.1.1.1]:1", []string{"::ffff:198.51.100.9"}, "198.51.100.9"},
		{"empty hops", "10.1.1.1:1234", []string{"198.51.100.1,, "}, "198.51.100.1"},
		{"bad remote", "pipe", []string{"198.51.100.1"}, "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			r.Header["X-Forwarded-For"] = tt.xff
			assert.Equal(t, tt.want, h.trusted.Client(h1.ParseHostAddr(r.RemoteAddr), r.Header["X-Forwarded-For"]).String())
		})
	}
}

func TestZones(t *testing.T) {
	pool := redirPoolOf(t, maglev.Builder{}, []tgt{redirA, redirB, redirC})
	h := redirNew(t, Config{Pool: pool, Zones: []ZoneRule{
		{Prefix: netip.MustParsePrefix("198.18.0.0/15"), Zone: "us"},
		{Prefix: netip.MustParsePrefix("198.18.1.0/24"), Zone: "eu"},
		{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Zone: "mars"},
	}})
	loc := func(client string) string {
		return redirServe(h, http.MethodGet, "/f", func(r *http.Request) { r.RemoteAddr = client + ":5" }).Header().Get("Location")
	}
	for range 20 {
		assert.Equal(t, redirBases[0]+"/f", loc("198.18.1.9"), "longest prefix: eu")
		assert.Contains(t, []string{redirBases[1] + "/f", redirBases[2] + "/f"}, loc("198.18.7.7"))
	}
	anyZone := map[string]bool{}
	for range 200 {
		anyZone[loc("203.0.113.5")] = true // zone without backends
		anyZone[loc("192.0.2.1")] = true   // no zone
	}
	assert.Len(t, anyZone, 3)

	// eu fails: its clients fall back to every ready backend.
	pool.SetHealthy(netip.MustParseAddrPort("127.0.0.1:8081"), false)
	for range 20 {
		assert.Contains(t, []string{redirBases[1] + "/f", redirBases[2] + "/f"}, loc("198.18.1.9"))
	}
	pool.SetHealthy(netip.MustParseAddrPort("127.0.0.1:8081"), true)
	assert.Equal(t, redirBases[0]+"/f", loc("198.18.1.9"))
}

func TestDuplicateLinks(t *testing.T) {
	h := redirNew(t, Config{DuplicateLinks: 1})
	w := redirServe(h, http.MethodGet, "/f?q=1")
	links := w.Header().Values("Link")
	require.Len(t, links, 1)
	assert.Equal(t, 1, strings.Count(links[0], "rel=duplicate"))
	assert.NotContains(t, links[0], w.Header().Get("Location"))

	h = redirNew(t, Config{DuplicateLinks: 5})
	w = redirServe(h, http.MethodGet, "/f?q=1")
	link := w.Header().Get("Link")
	assert.Equal(t, 2, strings.Count(link, "rel=duplicate"), link)
	for part := range strings.SplitSeq(link, ", ") {
		u := strings.TrimSuffix(strings.TrimPrefix(part, "<"), ">; rel=duplicate")
		assert.True(t, redirWithinBase(u), u)
		assert.True(t, strings.HasSuffix(u, "/f?q=1"), u)
	}
}

// redirWriter is a minimal ResponseWriter that reuses its header map, so
// allocation counts show the handler's own.
type redirWriter struct {
	h    http.Header
	code int
}

func (w *redirWriter) Header() http.Header         { return w.h }
func (w *redirWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *redirWriter) WriteHeader(code int)        { w.code = code }

func TestAllocations(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		max  float64
	}{
		{"plain", Config{}, 1},
		// balancer.HTTPRequest adapts the request for the key: one more.
		{"client ip", Config{Key: balancer.MustParseKey("client")}, 2},
		{"cookie", Config{StickyCookie: redirCookie}, 1},
		{"zones", Config{Zones: []ZoneRule{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Zone: "us"}}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := redirNew(t, tt.cfg)
			r := httptest.NewRequest(http.MethodGet, "/some/path?x=1", nil)
			r.RemoteAddr = "192.0.2.1:4000"
			w := &redirWriter{h: http.Header{}}
			h.ServeHTTP(w, r)
			if c := w.h.Values("Set-Cookie"); len(c) > 0 {
				r.Header.Set("Cookie", strings.SplitN(c[0], ";", 2)[0])
			}
			allocs := testing.AllocsPerRun(200, func() {
				clear(w.h)
				h.ServeHTTP(w, r)
			})
			assert.Equal(t, 302, w.code)
			assert.LessOrEqual(t, allocs, tt.max)
		})
	}
}
