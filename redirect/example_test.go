package redirect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/redirect"
)

func Example() {
	// The pool is the only list of backends; a member's base URL hangs
	// off it as metadata.
	pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: roundrobin.Builder{}})
	defer pool.Close()
	addr := netip.MustParseAddrPort("198.18.0.10:8080")
	pool.Add(balancer.Backend{Addr: addr, Meta: map[string]string{redirect.MetaURL: "http://198.18.0.10:8080/mirror"}})

	h, err := redirect.New(redirect.Config{Pool: pool})
	if err != nil {
		panic(err)
	}
	for _, target := range []string{"/files/a.iso?v=2", "//evil.example/", "http://evil.example/x"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
		fmt.Println(w.Code, w.Header().Get("Location"), w.Header().Get("Cache-Control"))
	}

	// Moving the mirror is a change of the member's metadata.
	pool.Set([]balancer.Backend{{Addr: addr, Meta: map[string]string{redirect.MetaURL: "https://mirror.example/pub"}}})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/files/a.iso", nil))
	fmt.Println(w.Code, w.Header().Get("Location"))

	// With its only backend down, the handler asks clients to come back.
	pool.SetHealthy(addr, false)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/upload", nil))
	fmt.Println(w.Code, "Retry-After:", w.Header().Get("Retry-After"))
	// Output:
	// 302 http://198.18.0.10:8080/mirror/files/a.iso?v=2 no-store
	// 302 http://198.18.0.10:8080/mirror/evil.example/ no-store
	// 302 http://198.18.0.10:8080/mirror/x no-store
	// 302 https://mirror.example/pub/files/a.iso
	// 503 Retry-After: 5
}

func ExampleConfig_stickyCookie() {
	pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: roundrobin.Builder{}})
	defer pool.Close()
	for _, a := range []string{"198.18.0.10:8080", "198.18.0.11:8080"} {
		pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(a)}) // URL: http://<addr>
	}
	h, err := redirect.New(redirect.Config{
		Pool:         pool,
		StickyCookie: "mirror",
		CookieKey:    []byte("a shared secret of 16+ bytes"),
	})
	if err != nil {
		panic(err)
	}

	first := httptest.NewRecorder()
	h.ServeHTTP(first, httptest.NewRequest(http.MethodGet, "/", nil))
	again := httptest.NewRequest(http.MethodGet, "/", nil)
	again.AddCookie(first.Result().Cookies()[0])
	second := httptest.NewRecorder()
	h.ServeHTTP(second, again)

	fmt.Println("same backend:", first.Header().Get("Location") == second.Header().Get("Location"))
	fmt.Println("vary:", second.Header().Get("Vary"))
	// Output:
	// same backend: true
	// vary: Cookie
}

func ExampleServer() {
	pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: roundrobin.Builder{}})
	defer pool.Close()
	pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.10:8080")})
	h, err := redirect.New(redirect.Config{Pool: pool})
	if err != nil {
		panic(err)
	}
	srv, err := redirect.NewServer(redirect.ServerConfig{Handler: h})
	if err != nil {
		panic(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a real program cancels on SIGTERM (Close), or calls srv.Shutdown
	fmt.Println(srv.ListenAndServe(ctx, "127.0.0.1:0"))
	fmt.Println(srv.ListenAndServe(context.Background(), "127.0.0.1:0"))
	// Output:
	// <nil>
	// redirect: server closed
}

// ExampleConfig_key keeps each client on one mirror with a Maglev pool
// and the client-address key; removing a mirror moves only its clients.
func ExampleConfig_key() {
	pool := balancer.MustNew(balancer.Config{Name: "mirrors", Builder: maglev.Builder{}})
	defer pool.Close()
	for _, a := range []string{"198.18.0.10:80", "198.18.0.11:80", "198.18.0.12:80"} {
		pool.Add(balancer.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	h, err := redirect.New(redirect.Config{Pool: pool, Key: balancer.MustParseKey("client")})
	if err != nil {
		panic(err)
	}
	where := func(client string) string {
		r := httptest.NewRequest(http.MethodGet, "/iso", nil)
		r.RemoteAddr = client + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Header().Get("Location")
	}
	clients := []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"}
	before := map[string]string{}
	stable := true
	for _, c := range clients {
		before[c] = where(c)
		for range 10 {
			stable = stable && where(c) == before[c]
		}
	}
	fmt.Println("every client kept its mirror:", stable)

	pool.Remove(netip.MustParseAddrPort("198.18.0.10:80"))
	onlyTheirs := true
	for _, c := range clients {
		moved := where(c) != before[c]
		onlyTheirs = onlyTheirs && moved == (before[c] == "http://198.18.0.10:80/iso")
	}
	fmt.Println("only the removed mirror's clients moved:", onlyTheirs)
	// Output:
	// every client kept its mirror: true
	// only the removed mirror's clients moved: true
}
