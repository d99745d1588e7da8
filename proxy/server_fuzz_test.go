package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// FuzzServer feeds arbitrary bytes, as one client connection, to a
// Server in front of a real backend (the parser's own fuzz test is
// h1.FuzzParse). Property: the server neither panics nor hangs — it
// closes the connection once the client stopped sending — and what it
// sends back is HTTP/1.1 responses.
func FuzzServer(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // one request
		"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.0\r\n\r\n",         // pipelined
		"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",                             // chunked with a trailer
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", // CL.TE
		"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",                                            // Expect
		"GET http://x/a%zz HTTP/1.1\r\nHost: x\r\n\r\n",                                                                                // bad target
		"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",                                     // HEAD, then close
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes",                                    // upgrade the backend refuses
	} {
		f.Add([]byte(seed))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(f, err)
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go backend.Serve(ln)
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	require.NoError(f, pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(ln.Addr().String())}))
	h, err := NewHTTP(HTTPConfig{Pool: pool, ResponseHeaderTimeout: 2 * time.Second})
	require.NoError(f, err)
	srv, err := NewServer(ServerConfig{Handler: h, ReadTimeout: 2 * time.Second, BodyIdleTimeout: time.Second})
	require.NoError(f, err)
	front, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(f, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), front) }()
	f.Cleanup(func() {
		srv.Close()
		<-served
		h.Close()
		pool.Close()
		backend.Close()
	})

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", front.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(in); err != nil {
			return // the server refused early and closed
		}
		c.(*net.TCPConn).CloseWrite()
		out, err := io.ReadAll(c)
		if err != nil && !isReset(err) {
			t.Fatalf("the server did not close the connection: %v", err)
		}
		if len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("not an HTTP/1.1 response: %q", out)
		}
	})
}

// isReset reports a connection reset: the server closing with unread
// bytes of ours, after its answer.
func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}
