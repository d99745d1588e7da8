package httplb_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/httplb"
)

// An http.Client calls a fleet through a Transport; a dead member's GETs
// are retried on a live one.
func ExampleTransport() {
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s for host %s", r.Method, r.URL.Path, r.Host)
	}))
	defer live.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()

	pool := balancer.MustNew(balancer.Config{Name: "fleet", Builder: roundrobin.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{{Addr: addrOf(dead.URL)}, {Addr: addrOf(live.URL)}})
	tr, _ := httplb.New(httplb.Config{Pool: pool})
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	for range 2 {
		resp, err := client.Get("http://fleet.internal/users/7")
		if err != nil {
			fmt.Println(err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, string(body))
	}
	// Output:
	// 200 GET /users/7 for host fleet.internal
	// 200 GET /users/7 for host fleet.internal
}

func addrOf(u string) netip.AddrPort {
	p, _ := url.Parse(u)
	return netip.MustParseAddrPort(p.Host)
}
