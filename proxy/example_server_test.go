package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxy"
)

// ExampleServer serves the proxy with the purpose-built HTTP/1.1
// front-end. A request that carries both Content-Length and
// Transfer-Encoding (a smuggling attempt) is refused with 400 before
// anything reaches the backend; a normal one is forwarded.
func ExampleServer() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend saw %s %s", r.Method, r.URL)
	})}
	go backend.Serve(ln)
	defer backend.Close()

	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	pool.Set([]balancer.Backend{{Addr: netip.MustParseAddrPort(ln.Addr().String())}})
	p, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool})
	if err != nil {
		panic(err)
	}
	defer p.Close()

	front, _ := net.Listen("tcp", "127.0.0.1:0")
	srv, err := proxy.NewServer(proxy.ServerConfig{Handler: p})
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), front) }()

	send := func(raw string) {
		c, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			panic(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%s: %s\n", resp.Status, strings.TrimSpace(string(body)))
	}
	send("GET /hello?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
	send("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	send("GET http:///x HTTP/1.1\r\nHost: example.com\r\n\r\n") // no authority

	// Shutdown drains; Serve then returns nil.
	fmt.Println(srv.Shutdown(context.Background()), <-served)
	// Output:
	// 200 OK: backend saw GET /hello?x=1
	// 400 Bad Request: proxy: Bad Request
	// 400 Bad Request: proxy: Bad Request
	// <nil> <nil>
}
