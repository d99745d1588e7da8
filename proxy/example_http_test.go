package proxy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxy"
)

// ExampleNewHTTP puts the proxy, as an http.Handler under net/http, in
// front of one backend on loopback; an access log names the backend of
// each attempt. A spoofed X-Forwarded-For from an untrusted client is
// replaced.
func ExampleNewHTTP() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend saw %s %s, X-Forwarded-For %s", r.Method, r.URL, r.Header.Get("X-Forwarded-For"))
	})}
	go backend.Serve(ln)
	defer backend.Close()

	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	pool.Set([]balancer.Backend{{Addr: netip.MustParseAddrPort(ln.Addr().String())}})
	p, err := proxy.NewHTTP(proxy.HTTPConfig{
		Pool: pool,
		OnAttempt: func(a *proxy.Attempt) {
			fmt.Println("access:", a.Request.Method, a.Request.URL.Path, "try", a.Try, "status", a.Status,
				"bytes", a.Bytes, "member", a.Backend.Addr() == pool.Snapshot().Members[0].Addr())
		},
	})
	if err != nil {
		panic(err)
	}
	defer p.Close()

	front, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(front)
	defer srv.Close()

	req, _ := http.NewRequest("GET", "http://"+front.Addr().String()+"/hello?x=1", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Status)
	fmt.Println(string(body))
	http.DefaultClient.CloseIdleConnections()
	// Output:
	// access: GET /hello try 1 status 200 bytes 53 member true
	// 200 OK
	// backend saw GET /hello?x=1, X-Forwarded-For 127.0.0.1
}
