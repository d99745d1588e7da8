package proxy_test

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/proxy"
)

// ExampleHTTPConfig_key keeps each user, named by a header, on one
// backend of a ring-hash pool behind the proxy.
func ExampleHTTPConfig_key() {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: ringhash.Builder{}})
	defer pool.Close()
	for _, name := range []string{"a", "b", "c"} {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
		})}
		go backend.Serve(ln)
		defer backend.Close()
		pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(ln.Addr().String())})
	}
	p, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Key: balancer.MustParseKey("header:X-User")})
	if err != nil {
		panic(err)
	}
	defer p.Close()
	front, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(front)
	defer srv.Close()

	for _, user := range []string{"ann", "bob", "cid"} {
		seen := map[string]bool{}
		for range 5 {
			req, _ := http.NewRequest(http.MethodGet, "http://"+front.Addr().String()+"/", nil)
			req.Header.Set("X-User", user)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				panic(err)
			}
			resp.Body.Close()
			seen[resp.Header.Get("X-Backend")] = true
		}
		fmt.Println(user, "saw one backend:", len(seen) == 1)
	}
	http.DefaultClient.CloseIdleConnections()
	// Output:
	// ann saw one backend: true
	// bob saw one backend: true
	// cid saw one backend: true
}
