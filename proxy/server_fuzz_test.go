package proxy

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzServerRequest feeds request heads to Server's parser. It must never
// panic, must refuse only with the statuses it documents, and a head it
// accepts must serialise to a head that parses to the same request.
func FuzzServerRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"get /a?b=c HTTP/1.0\r\n\r\n",
		"POST /u HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 5\r\nexpect: 100-continue\r\n\r\n",
		"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, close\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://example.com/p HTTP/1.1\r\nHost: y\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		// Smuggling shapes, all refused.
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n 2\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
		"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var rh reqHead
		code := parseRequestHead(head, &rh)
		switch code {
		case 0:
		case http.StatusBadRequest, http.StatusNotImplemented, http.StatusExpectationFailed, http.StatusHTTPVersionNotSupported:
			return
		default:
			t.Fatalf("unexpected status %d", code)
		}
		require.False(t, rh.chunked && rh.contentLength >= 0, "never both framings")
		require.LessOrEqual(t, rh.hosts, 1)
		out := rh.appendTo(nil)
		var again reqHead
		require.Zero(t, parseRequestHead(out, &again), "%q", out)
		require.Equal(t, rh.method, again.method)
		require.Equal(t, rh.target, again.target)
		require.Equal(t, rh.minor, again.minor)
		require.Equal(t, rh.host, again.host)
		require.Equal(t, rh.contentLength, again.contentLength)
		require.Equal(t, rh.chunked, again.chunked)
		require.Equal(t, rh.keep(), again.keep())
		require.Equal(t, rh.expectContinue, again.expectContinue)
		require.Equal(t, rh.fields, again.fields)
		require.Equal(t, out, again.appendTo(nil))
	})
}
