package proxy

import (
	"bytes"
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
// h1.FuzzParse). The client side is an in-memory connection whose reads
// end with the input, so an execution costs no client socket. Property:
// the server neither panics nor hangs — it is done with the connection
// once the input is consumed — and what it sends back is HTTP/1.1
// responses.
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
	f.Cleanup(func() {
		h.Close()
		pool.Close()
		backend.Close()
	})

	f.Fuzz(func(t *testing.T, in []byte) {
		c := &memConn{in: bytes.NewReader(in)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := srv.newConn(c, nil, nil)
			srv.serveConn(sc)
			srv.releaseConn(sc)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the server is still busy with %q", in)
		}
		out := c.out.Bytes()
		if len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("not an HTTP/1.1 response: %q", out)
		}
	})
}

// memConn is a client connection in memory: reads return the input and
// then io.EOF (the client stopped sending), writes are kept, deadlines
// are ignored.
type memConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return memAddr }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

var memAddr = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
