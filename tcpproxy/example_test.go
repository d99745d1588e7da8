package tcpproxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/tcpproxy"
)

func Example() {
	// A backend that answers "hello, " + what it reads.
	backend, _ := net.Listen("tcp", "127.0.0.1:0")
	defer backend.Close()
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		name, _ := io.ReadAll(c) // until the client half-closes
		fmt.Fprintf(c, "hello, %s", name)
	}()

	// The pool is the list of backends; the proxy picks from it, by
	// client address here, and never closes it.
	pool := balancer.MustNew(balancer.Config{Name: "hello", Builder: maglev.Builder{}})
	defer pool.Close()
	pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(backend.Addr().String())})

	p, err := tcpproxy.New(tcpproxy.Config{Pool: pool, Key: balancer.MustParseKey("client")})
	if err != nil {
		panic(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(context.Background(), ln)
	defer p.Shutdown(context.Background())

	c, _ := net.Dial("tcp", ln.Addr().String())
	defer c.Close()
	io.WriteString(c, "proxy")
	c.(*net.TCPConn).CloseWrite()
	reply, _ := io.ReadAll(c)
	fmt.Println(string(reply))
	// Output:
	// hello, proxy
}
