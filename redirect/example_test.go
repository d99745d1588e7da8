package redirect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"

	"github.com/lbkit/lbkit/redirect"
)

func Example() {
	h, err := redirect.New(redirect.Config{
		Backends: []redirect.Target{{URL: "http://198.18.0.10:8080/mirror"}},
	})
	if err != nil {
		panic(err)
	}
	defer h.Close()

	for _, target := range []string{"/files/a.iso?v=2", "//evil.example/", "http://evil.example/x"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
		fmt.Println(w.Code, w.Header().Get("Location"), w.Header().Get("Cache-Control"))
	}

	// With its only backend down, the handler asks clients to come back.
	h.Pool().SetHealthy(netip.MustParseAddrPort("198.18.0.10:8080"), false)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/upload", nil))
	fmt.Println(w.Code, "Retry-After:", w.Header().Get("Retry-After"))
	// Output:
	// 302 http://198.18.0.10:8080/mirror/files/a.iso?v=2 no-store
	// 302 http://198.18.0.10:8080/mirror/evil.example/ no-store
	// 302 http://198.18.0.10:8080/mirror/x no-store
	// 503 Retry-After: 5
}

func ExampleConfig_cookieAffinity() {
	h, err := redirect.New(redirect.Config{
		Backends: []redirect.Target{
			{URL: "http://198.18.0.10:8080"},
			{URL: "http://198.18.0.11:8080"},
		},
		Affinity:  redirect.AffinityCookie,
		CookieKey: []byte("a shared secret of 16+ bytes"),
	})
	if err != nil {
		panic(err)
	}
	defer h.Close()

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
	h, err := redirect.New(redirect.Config{
		Backends: []redirect.Target{{URL: "http://198.18.0.10:8080"}, {URL: "http://198.18.0.11:8080"}},
	})
	if err != nil {
		panic(err)
	}
	defer h.Close()
	srv := &redirect.Server{Handler: h}

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a real program cancels on SIGTERM, or calls srv.Shutdown
	err = srv.ListenAndServe(ctx, "127.0.0.1:0")
	fmt.Println(err)
	// Output:
	// context canceled
}
