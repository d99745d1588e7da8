package httplb_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/httplb"
)

// BenchmarkRoundTrip measures a GET to one loopback backend through a
// plain http.Transport and through httplb (one http.Transport per member,
// and one shared by every member), so the difference is httplb's cost per
// request.
func BenchmarkRoundTrip(b *testing.B) {
	be := startBackend(b, ok)
	plain := &http.Transport{MaxIdleConnsPerHost: httplb.DefaultMaxIdleConnsPerHost}
	b.Cleanup(plain.CloseIdleConnections)
	pool := newPool(b, be.addr)
	perMember, err := httplb.New(httplb.Config{Pool: pool})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(perMember.CloseIdleConnections)
	sharedRT := &http.Transport{MaxIdleConnsPerHost: httplb.DefaultMaxIdleConnsPerHost}
	b.Cleanup(sharedRT.CloseIdleConnections)
	shared, err := httplb.New(httplb.Config{Pool: pool, NewTransport: func(balancer.Backend) http.RoundTripper { return sharedRT }})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		url  string
	}{
		{"plain", plain, "http://" + be.addr.String() + "/"},
		{"httplb", perMember, "http://fleet/"},
		{"httplb-shared-transport", shared, "http://fleet/"},
	} {
		run := func(b *testing.B, loop func(func())) {
			b.ReportAllocs()
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, tc.url, nil)
			loop(func() {
				resp, err := tc.rt.RoundTrip(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body) //nolint:errcheck // benchmark
				resp.Body.Close()
			})
		}
		b.Run(tc.name, func(b *testing.B) {
			run(b, func(f func()) {
				for b.Loop() {
					f()
				}
			})
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			run(b, func(f func()) {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						f()
					}
				})
			})
		})
	}
}
