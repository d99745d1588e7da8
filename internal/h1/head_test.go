package h1

import (
	"bufio"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parse(t *testing.T, raw string) (*Head, int) {
	t.Helper()
	var h Head
	return &h, h.Parse([]byte(raw))
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name, raw string
		code      int
	}{
		{"CL.TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"TE.CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400},
		{"differing Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n", 400},
		{"differing Content-Length list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n", 400},
		{"empty Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400},
		{"signed Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", 400},
		{"19-digit Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456789\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400},
		{"bare CR", "GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", 400},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\nHost: x\r\n: 5\r\n\r\n", 400},
		{"no Host in HTTP/1.1", "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400},
		{"two Hosts in HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", 400},
		{"Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"two Transfer-Encoding fields", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"unsupported Transfer-Encoding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505},
		{"garbled version", "GET / HTTQ/1.1\r\nHost: x\r\n\r\n", 400},
		{"relative target", "GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"asterisk with GET", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"other scheme", "GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape in the path", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"cut escape in the path", "GET /a%2 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape in an absolute path", "GET http://x/a%zz?q HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"escaped space in the authority", "GET http://a%20b/x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"empty authority", "GET http:///x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"empty authority before a query", "GET http://?x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"port without host", "GET http://:80/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"user info", "GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"letters in the port", "GET http://x:8o/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bracketed IPv4", "GET http://[1.2.3.4]/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"open IPv6 literal", "GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"CONNECT without port", "CONNECT x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad byte in method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bytes after the empty line", "GET / HTTP/1.1\r\nHost: x\r\n\r\nX", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, code := parse(t, tt.raw)
			assert.Equal(t, tt.code, code)
		})
	}
}

func TestParseAccepts(t *testing.T) {
	h, code := parse(t, "post /u?a=1&uid=7&b HTTP/1.1\r\nhost: example\r\ncontent-length: 5, 5\r\nCONNECTION: Keep-Alive, close\r\nexpect: 100-continue\r\ncookie: a=1; sid=s1; sid=s2\r\nx-user:  u1 \r\n\r\n")
	require.Zero(t, code)
	assert.Equal(t, "post", h.Method)
	assert.Equal(t, "/u?a=1&uid=7&b", h.Target)
	assert.Equal(t, 1, h.Minor)
	assert.Equal(t, "example", h.Host)
	assert.Equal(t, int64(5), h.ContentLength)
	assert.False(t, h.KeepAlive())
	assert.True(t, h.ExpectContinue)
	assert.Equal(t, "/u", h.Path())
	q, ok := h.RawQuery()
	assert.True(t, ok)
	assert.Equal(t, "a=1&uid=7&b", q)
	for name, want := range map[string]string{"uid": "7", "a": "1", "b": ""} {
		v, ok := h.Query(name)
		assert.True(t, ok, name)
		assert.Equal(t, want, v, name)
	}
	_, ok = h.Query("u")
	assert.False(t, ok)
	v, ok := h.Cookie("sid")
	assert.True(t, ok)
	assert.Equal(t, "s1", v)
	v, ok = h.Header("X-USER")
	assert.True(t, ok)
	assert.Equal(t, "u1", v)
	assert.Equal(t, "Content-Length", h.Fields[1].Name, "names are canonical")

	h, code = parse(t, "GET HTTP://h.example:8080?q HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	require.Zero(t, code)
	assert.True(t, h.KeepAlive())
	assert.Equal(t, "h.example:8080", h.Authority())
	assert.Equal(t, "/", h.Path())
	assert.Equal(t, int64(-1), h.ContentLength)

	h, code = parse(t, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Zero(t, code)
	assert.Equal(t, "", h.Path())

	h, code = parse(t, "CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n")
	require.Zero(t, code)
	assert.Equal(t, "h.example:443", h.Authority())
	assert.Equal(t, "", h.Path())
}

func TestReadHead(t *testing.T) {
	tests := []struct {
		name, raw string
		size      int
		status    int
	}{
		{"whole", "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next", 64, 0},
		{"bare LF", "GET / HTTP/1.1\nHost: x\r\n\r\n", 64, 400},
		{"line too long", "GET /" + strings.Repeat("a", 80) + " HTTP/1.1\r\n\r\n", 32, 414},
		{"head too large", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 80) + "\r\n\r\n", 32, 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			partial := 0
			br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(tt.raw)), tt.size)
			head, status, err := ReadHead(br, func() { partial++ })
			require.NoError(t, err)
			assert.Equal(t, tt.status, status)
			assert.Equal(t, 1, partial, "partial is called once")
			if status == 0 {
				assert.Equal(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", string(head))
			}
		})
	}
	_, _, err := ReadHead(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\n")), nil)
	assert.Error(t, err, "EOF before the end of the head")
}

func TestParseAllocs(t *testing.T) {
	raw := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: x\r\nCookie: a=b; sid=1\r\nConnection: keep-alive\r\n\r\n")
	var h Head
	buf := make([]byte, len(raw))
	allocs := testing.AllocsPerRun(200, func() {
		copy(buf, raw)
		if h.Parse(buf) != 0 {
			t.Fatal("refused")
		}
		if v, ok := h.Cookie("sid"); !ok || v != "1" {
			t.Fatal("cookie")
		}
	})
	assert.Zero(t, allocs)
}

// FuzzParse feeds request heads to the parser. Property: it never
// panics, it refuses only with the statuses it documents, a head it
// accepts never has both framings nor two Hosts, and it serialises to a
// head that parses to the same request (a round trip).
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // the common case
		"get /a?b=c HTTP/1.0\r\n\r\n",       // HTTP/1.0 needs no Host; methods are case-sensitive tokens
		"POST /u HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 5\r\nexpect: 100-continue\r\n\r\n", // a list of equal lengths
		"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, close\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",                                                 // asterisk form
		"GET http://example.com/p HTTP/1.1\r\nHost: y\r\n\r\n",                                  // absolute form
		"GET http://[::1]:8080?q HTTP/1.1\r\nHost: y\r\n\r\n",                                   // IPv6 authority, no path
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",                     // authority form
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", // CL.TE: refused
		"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n 2\r\n\r\n",                                       // obs-fold: refused
		"GET / HTTP/1.1\nHost: x\n\n",                                                           // bare LF: refused
		"GET / HTTP/1.1\r\nHost : x\r\n\r\n",                                                    // space before colon: refused
		"GET / HTTP/9.9\r\nHost: x\r\n\r\n",                                                     // version: 505
		"GET http://a%20b/x HTTP/1.1\r\nHost: y\r\n\r\n",                                        // escape in the authority
		"GET http:///x HTTP/1.1\r\nHost: y\r\n\r\n",                                             // empty authority
		"GET /a%zz HTTP/1.1\r\nHost: y\r\n\r\n",                                                 // bad escape
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var h Head
		code := h.Parse(head)
		switch code {
		case 0:
		case http.StatusBadRequest, http.StatusNotImplemented, http.StatusExpectationFailed, http.StatusHTTPVersionNotSupported:
			return
		default:
			t.Fatalf("unexpected status %d", code)
		}
		require.False(t, h.Chunked && h.ContentLength >= 0, "never both framings")
		require.LessOrEqual(t, h.hosts, 1)
		checkTarget(t, &h)
		out := h.AppendTo(nil)
		var again Head
		require.Zero(t, again.Parse(out), "%q", out)
		require.Equal(t, h.Method, again.Method)
		require.Equal(t, h.Target, again.Target)
		require.Equal(t, h.Minor, again.Minor)
		require.Equal(t, h.Host, again.Host)
		require.Equal(t, h.ContentLength, again.ContentLength)
		require.Equal(t, h.Chunked, again.Chunked)
		require.Equal(t, h.KeepAlive(), again.KeepAlive())
		require.Equal(t, h.ExpectContinue, again.ExpectContinue)
		require.Equal(t, h.Fields, again.Fields)
		require.Equal(t, out, again.AppendTo(nil))
	})
}

// checkTarget holds an accepted target against net/url: what the
// parser accepts, url.ParseRequestURI accepts too, with the same
// authority and query.
func checkTarget(t *testing.T, h *Head) {
	t.Helper()
	if h.Target == "*" {
		return
	}
	if h.Method == http.MethodConnect && h.Target[0] != '/' {
		require.Equal(t, h.Target, h.Authority())
		return
	}
	u, err := url.ParseRequestURI(h.Target)
	require.NoError(t, err)
	require.Equal(t, u.Host, h.Authority())
	q, hasQ := h.RawQuery()
	require.Equal(t, u.RawQuery, q)
	require.Equal(t, u.ForceQuery || u.RawQuery != "", hasQ)
	require.NotEmpty(t, h.Path())
}
