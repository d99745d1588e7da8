package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/h1"
)

// parsed is the comparable view of a respHead for round trips.
type parsed struct {
	Minor, Status int
	Reason        string
	Fields        []string
	Skip          []bool
	CL            int64
	Chunked       bool
	Close         bool
	Upgrade       int
}

func view(h *respHead) parsed {
	p := parsed{Minor: h.minor, Status: h.status, Reason: string(h.reason), CL: h.contentLength,
		Chunked: h.chunked, Close: h.closeConn, Upgrade: h.upgrade}
	for _, f := range h.fields {
		p.Fields = append(p.Fields, string(h.name(f))+": "+string(h.value(f)))
		p.Skip = append(p.Skip, f.skip)
	}
	return p
}

func parseString(s string, limit int) (*respHead, error) {
	var h respHead
	var scratch []byte
	br := bufio.NewReaderSize(strings.NewReader(s), 16)
	return &h, readHead(br, &h, &scratch, limit)
}

// FuzzParseResponse checks that the response-head parser never panics,
// that what it accepts is well formed (token names, no control bytes in
// values, never Content-Length together with chunked) and that an accepted
// head written back out parses to the same thing.
func FuzzParseResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200\r\nConnection: keep-alive\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nConnection: x-a, close\r\nX-A: 1\r\n\r\n",
		// Rejected: CL with TE (response smuggling), folded lines, bare LF.
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\nX: a\n\n",
		"HTTP/1.1 200 \xff\r\nX: \x80\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseString(string(data), 1<<10)
		if err != nil {
			return
		}
		require.False(t, h.chunked && h.contentLength >= 0)
		require.GreaterOrEqual(t, h.status, 100)
		for _, fl := range h.fields {
			require.NotEmpty(t, h.name(fl))
			for _, c := range h.name(fl) {
				require.True(t, h1.TokenTable[c])
			}
			for _, c := range h.value(fl) {
				require.True(t, h1.ValidValueByte(c))
			}
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		h.writeHead(bw, true)
		bw.Flush()
		h2, err := parseString(out.String(), 1<<20)
		require.NoError(t, err, "re-parse %q", out.String())
		if d := cmp.Diff(view(h), view(h2)); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}

func TestParseResponseCases(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
		want     parsed
	}{
		{"simple", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A:  v \r\n\r\n", true,
			parsed{Minor: 1, Status: 200, Reason: "OK", Fields: []string{"Content-Length: 2", "X-A: v"}, Skip: []bool{false, false}, CL: 2}},
		{"1.0 closes", "HTTP/1.0 200 OK\r\n\r\n", true, parsed{Status: 200, Reason: "OK", CL: -1, Close: true}},
		{"named in Connection", "HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\n\r\n", true,
			parsed{Minor: 1, Status: 200, Reason: "OK", Fields: []string{"Connection: x-a", "X-A: 1"}, Skip: []bool{true, true}, CL: -1}},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", true,
			parsed{Minor: 1, Status: 200, Reason: "OK", Fields: []string{"Transfer-Encoding: Chunked"}, Skip: []bool{true}, CL: -1, Chunked: true}},
		{"CL+TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", false, parsed{}},
		{"TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, parsed{}},
		{"two TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, parsed{}},
		{"CL list differs", "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", false, parsed{}},
		{"empty name", "HTTP/1.1 200 OK\r\n: x\r\n\r\n", false, parsed{}},
		{"NUL", "HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", false, parsed{}},
		{"too big", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", false, parsed{}},
		{"EOF", "HTTP/1.1 200 OK\r\nX: a\r\n", false, parsed{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseString(tt.in, 1<<10)
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			if d := cmp.Diff(tt.want, view(h)); d != "" {
				t.Fatalf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestChunkedReader(t *testing.T) {
	tests := []struct {
		name, in, body string
		ok             bool
	}{
		{"two chunks and a trailer", "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n", "abcde", true},
		{"upper hex", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", true},
		{"missing CRLF after data", "3\r\nabcX\r\n0\r\n\r\n", "", false},
		{"bad size", "g\r\n", "", false},
		{"overflow", "1000000000000000\r\n", "", false},
		{"truncated", "5\r\nab", "", false},
		{"no last chunk", "2\r\nab\r\n", "", false},
		{"no end of trailers", "0\r\nX: 1\r\n", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var scratch []byte
			trailer := map[string][]string{}
			cr := &chunkedReader{br: bufio.NewReaderSize(strings.NewReader(tt.in), 16), scratch: &scratch, limit: 1 << 10, trailer: trailer}
			got, err := io.ReadAll(cr)
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.body, string(got))
		})
	}
}

// FuzzChunked checks that the chunked decoder never panics and that a
// body it accepts, encoded again in one chunk with the same trailers,
// decodes to the same bytes and trailers.
// chunkedSeeds are the fuzz tests' seeds of chunked bodies.
var chunkedSeeds = []string{
	"3\r\nabc\r\n0\r\n\r\n",
	"1;a=b\r\nx\r\n0\r\nX-T: 1\r\n\r\n",
	"0\r\n\r\n",
	"ffffffffffffffff\r\n",
	"3\r\nabc0\r\n\r\n",
	"0\r\nX: 1\n\r\n",
	"2\nab\r\n0\r\n\r\n",
}

// decodeChunked decodes in with chunkedReader.
func decodeChunked(in []byte) (string, http.Header, error) {
	var scratch []byte
	tr := http.Header{}
	cr := &chunkedReader{br: bufio.NewReaderSize(bytes.NewReader(in), 16), scratch: &scratch, limit: 1 << 10, trailer: tr}
	b, err := io.ReadAll(cr)
	return string(b), tr, err
}

func FuzzChunked(f *testing.F) {
	for _, seed := range chunkedSeeds {
		f.Add([]byte(seed))
	}
	decode := func(in string) (string, http.Header, error) { return decodeChunked([]byte(in)) }
	f.Fuzz(func(t *testing.T, data []byte) {
		body, tr, err := decode(string(data))
		if err != nil {
			return
		}
		var enc strings.Builder
		if len(body) > 0 {
			fmt.Fprintf(&enc, "%x\r\n%s\r\n", len(body), body)
		}
		enc.WriteString("0\r\n")
		for k, vv := range tr {
			for _, v := range vv {
				fmt.Fprintf(&enc, "%s: %s\r\n", strings.TrimPrefix(k, http.TrailerPrefix), v)
			}
		}
		enc.WriteString("\r\n")
		body2, tr2, err := decode(enc.String())
		require.NoError(t, err, "re-decode %q", enc.String())
		require.Equal(t, body, body2)
		require.Equal(t, tr, tr2)
	})
}

// decodeFeed decodes in with chunkFeed, fed in pieces of size step.
func decodeFeed(in string, step int) (string, http.Header, error) {
	var f chunkFeed
	tr := http.Header{}
	f.reset(1<<10, tr)
	var out strings.Builder
	b := []byte(in)
	for len(b) > 0 && !f.done() {
		p := b[:min(step, len(b))]
		n, err := f.feed(p, func(d []byte) error { out.Write(d); return nil })
		if err != nil {
			return "", nil, err
		}
		b = b[n:]
	}
	if !f.done() {
		return "", nil, io.ErrUnexpectedEOF
	}
	return out.String(), tr, nil
}

// FuzzChunkFeed checks that the event loop's incremental decoder agrees
// with chunkedReader on every input, however it is cut up.
func FuzzChunkFeed(f *testing.F) {
	for _, seed := range chunkedSeeds {
		f.Add([]byte(seed), uint8(1))
		f.Add([]byte(seed), uint8(5))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		body, want, err := decodeChunked(data)
		got, tr, ferr := decodeFeed(string(data), int(step%64)+1)
		if err != nil {
			require.Error(t, ferr, "chunkedReader refused %q: %v", data, err)
			return
		}
		require.NoError(t, ferr, "%q", data)
		require.Equal(t, body, got)
		require.Equal(t, want, tr)
	})
}
