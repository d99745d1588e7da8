package redirect

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzLocation feeds arbitrary paths, raw paths, queries and methods to
// the handler. Property: it never panics, and a redirect's Location starts
// with a configured base URL followed by a single "/" and holds no control character, space or non-ASCII byte.
func FuzzLocation(f *testing.F) {
	seeds := []struct{ path, rawPath, query, method string }{
		{"/", "", "", "GET"},
		{"//evil.example", "", "", "GET"},                       // protocol-relative
		{"/\r\nSet-Cookie:x", "/%0d%0aSet-Cookie:x", "", "GET"}, // header injection
		{"/", "", "a\r\nLocation: http://evil", "POST"},         // injection in the query
		{"/a/../../b", "", "", "GET"},                           // dot segments
		{"/\\evil", "", "#frag", "PUT"},
		{"*", "", "", "OPTIONS"},
		{"", "", "", ""},
		{"/ü/\x00/\x7f", "/%zz", "%%%", "DELETE"},
		{"/" + strings.Repeat("x", 9000), "", "", "GET"}, // huge
	}
	for _, s := range seeds {
		f.Add(s.path, s.rawPath, s.query, s.method)
	}
	h, err := New(Config{Pool: redirPool(f, []tgt{redirA, redirB, redirC}), DuplicateLinks: 2, StickyCookie: redirCookie})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path, rawPath, query, method string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method = method
		r.URL = &url.URL{Path: path, RawPath: rawPath, RawQuery: query}
		r.Host = "evil.example"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusFound, http.StatusTemporaryRedirect:
		case http.StatusBadRequest, http.StatusRequestURITooLong:
			if w.Header().Get("Location") != "" {
				t.Fatalf("status %d with a Location", w.Code)
			}
			return
		default:
			t.Fatalf("unexpected status %d", w.Code)
		}
		locs := []string{w.Header().Get("Location")}
		for part := range strings.SplitSeq(w.Header().Get("Link"), ", ") {
			if part != "" {
				locs = append(locs, strings.TrimSuffix(strings.TrimPrefix(part, "<"), ">; rel=duplicate"))
			}
		}
		for _, loc := range locs {
			if !redirWithinBase(loc) {
				t.Fatalf("Location %q is outside every base", loc)
			}
			if rest := loc[len(redirBaseOf(loc)):]; strings.HasPrefix(rest, "//") {
				t.Fatalf("Location %q has // where the path joins the base", loc)
			}
			for i := 0; i < len(loc); i++ {
				if c := loc[i]; c <= ' ' || c >= 0x7f {
					t.Fatalf("Location %q has byte %#x", loc, c)
				}
			}
			if u, err := url.Parse(loc); err != nil || !redirWithinBase(u.Scheme+"://"+u.Host+u.EscapedPath()) {
				t.Fatalf("Location %q does not parse back into a base: %v", loc, err)
			}
		}
	})
}
