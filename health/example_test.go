package health_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
)

// waitReady waits until the pool's ready set, named through names, is
// want, and prints it.
func waitReady(p *balancer.Pool, names map[netip.AddrPort]string, want string) {
	deadline := time.After(10 * time.Second)
	for {
		s := p.Snapshot()
		var got []string
		for _, w := range s.Ready {
			got = append(got, names[w.Endpoint.Addr()])
		}
		slices.Sort(got)
		if strings.Join(got, " ") == want {
			fmt.Println("ready:", want)
			return
		}
		select {
		case <-s.Changed():
		case <-deadline:
			fmt.Println("ready:", strings.Join(got, " "), "(timed out waiting for", want+")")
			return
		}
	}
}

// A pool of three HTTP backends kept healthy by HTTP probes and by the
// outcomes a front-end reports. One backend dies and leaves the ready set
// after its probes fail; another returns errors to real traffic and is
// ejected by passive outlier detection.
func Example() {
	names := map[netip.AddrPort]string{}
	var servers []*httptest.Server
	for _, name := range []string{"a", "b", "c"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok from "+name)
		}))
		defer srv.Close()
		servers = append(servers, srv)
		names[netip.MustParseAddrPort(srv.Listener.Addr().String())] = name
	}

	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: maglev.Builder{}})
	defer pool.Close()
	chk, err := health.New(health.Config{
		Logger:  slog.New(slog.DiscardHandler),
		Passive: health.PassiveConfig{MaxEjectedPercent: 50},
	})
	if err != nil {
		panic(err)
	}
	defer chk.Close()

	// The pool is the one list of members; the checker follows it.
	var backends []balancer.Backend
	for addr := range names {
		backends = append(backends, balancer.Backend{Addr: addr})
	}
	if err := pool.Set(backends); err != nil {
		panic(err)
	}
	err = chk.Follow(pool, health.Template{
		Probe:    health.HTTP{Path: "/healthz", BodyContains: "ok"},
		Interval: 50 * time.Millisecond,
		Fall:     2,
	})
	if err != nil {
		panic(err)
	}
	// Members start unknown; the first probes run at once.
	waitReady(pool, names, "a b c")

	servers[1].Close() // b dies
	waitReady(pool, names, "a c")

	// A front-end's requests to c fail five times in a row: it reports
	// each through Done, as it does for every request.
	for _, ep := range pool.Endpoints() {
		if names[ep.Addr()] == "c" {
			for range 5 {
				ep.Start()
				ep.Done(errors.New("503 from c"), time.Millisecond)
			}
		}
	}
	waitReady(pool, names, "a")
	// Output:
	// ready: a b c
	// ready: a c
	// ready: a
}

// Observe only counts; ejection happens on the target's goroutine, and
// subscribers hear of it as an event.
func ExampleChecker_Observe() {
	chk, _ := health.New(health.Config{
		Logger:  slog.New(slog.DiscardHandler),
		Passive: health.PassiveConfig{ConsecutiveFailures: 3, BaseEjection: time.Minute},
	})
	defer chk.Close()
	events := make(chan health.Event, 8)
	defer chk.Subscribe(func(e health.Event) { events <- e })()

	backend := netip.MustParseAddrPort("198.18.0.10:443")
	chk.SetTarget(health.Target{Addr: backend}) // passive only
	for range 3 {
		chk.Observe(backend, health.Outcome{Failed: true, Latency: 2 * time.Millisecond})
	}
	for range 2 {
		e := <-events
		fmt.Printf("%s: %s -> %s (%s)\n", e.Target, e.Prev, e.State, e.Reason)
	}
	// Output:
	// 198.18.0.10:443: unknown -> healthy (added)
	// 198.18.0.10:443: healthy -> unhealthy (passive: consecutive failures)
}

func ExampleParseAgent() {
	for _, words := range []string{"ready 75%", "drain # deploy in progress", "weight=20 maxconn:100", "up sideways"} {
		r, err := health.ParseAgent(words)
		fmt.Printf("%q: agent=%s weight=%v/%d/%v err=%v\n", words, r.Agent, r.HasWeight, r.Weight, r.WeightPercent, err)
	}
	// Output:
	// "ready 75%": agent=up weight=true/75/true err=<nil>
	// "drain # deploy in progress": agent=drain weight=false/0/false err=<nil>
	// "weight=20 maxconn:100": agent=none weight=true/20/false err=<nil>
	// "up sideways": agent=up weight=false/0/false err=health: agent report: unknown or malformed word "sideways"
}

// A custom check: anything that can tell healthy from not.
func ExampleProberFunc() {
	probe := health.ProberFunc(func(ctx context.Context, addr netip.AddrPort) (health.Report, error) {
		if !addr.Addr().IsLoopback() {
			return health.Report{}, fmt.Errorf("%s is not on loopback", addr)
		}
		return health.Report{}, nil
	})
	_, err := probe.Probe(context.Background(), netip.MustParseAddrPort("198.18.0.1:53"))
	fmt.Println(err)
	// Output: 198.18.0.1:53 is not on loopback
}
