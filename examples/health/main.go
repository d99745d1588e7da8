// Command health shows lbkit's health plane keeping a balancer pool in
// step with its backends: three HTTP backends on loopback are checked by
// HTTP probes while a client sends requests through the pool and reports
// their outcomes. One backend is killed, ejected and, once restarted,
// let back in with a slow start; another is drained by its agent header
// and comes back at half weight. The example prints every health event,
// every change of the pool's ready set and, at each step of its script,
// where the requests since the previous step went. Each step waits for
// the event it causes, so it exits after a few seconds.
//
//	go run ./examples/health
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/health"
)

// backend is one loopback HTTP server whose agent words can be changed.
type backend struct {
	name  string
	addr  netip.AddrPort
	srv   *http.Server
	agent atomic.Value // string
}

// start serves b on addr ("127.0.0.1:0" for a free port), again after a
// stop.
func (b *backend) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	b.addr = netip.MustParseAddrPort(ln.Addr().String())
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Agent-State", b.agent.Load().(string))
			io.WriteString(w, "ok from "+b.name+"\n")
		}),
		ReadHeaderTimeout: time.Second,
	}
	go b.srv.Serve(ln)
	return nil
}

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "health example:", err)
		os.Exit(1)
	}
}

// run runs the example and writes what it sees to w.
func run(w io.Writer) error {
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(w, "%5.2fs "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
	}

	var backends []*backend
	names := map[netip.AddrPort]string{}
	for _, name := range []string{"alpha", "bravo", "charlie"} {
		b := &backend{name: name}
		b.agent.Store("up")
		if err := b.start("127.0.0.1:0"); err != nil {
			return err
		}
		defer func() { b.srv.Close() }() // the one running at the end
		backends = append(backends, b)
		names[b.addr] = name
	}
	alpha, bravo, charlie := backends[0], backends[1], backends[2]

	pool, err := balancer.New(balancer.Config{Builder: maglev.Builder{}, SlowStart: time.Second})
	if err != nil {
		return err
	}
	defer pool.Close()
	chk, err := health.New(health.Config{
		Logger:  slog.New(slog.DiscardHandler),
		Passive: health.PassiveConfig{MaxEjectedPercent: 50},
	})
	if err != nil {
		return err
	}
	defer chk.Close()

	// Events reach this goroutine through a channel, so everything is
	// printed in the order it is seen. quit releases a callback still
	// waiting to hand one over when run returns (before chk.Close, which
	// waits for the event goroutine).
	events := make(chan health.Event)
	quit := make(chan struct{})
	unsubscribe := chk.Subscribe(func(e health.Event) {
		select {
		case events <- e:
		case <-quit:
		}
	})
	defer unsubscribe()
	defer close(quit)

	// The ready set, with effective weights; printed when its membership
	// changes (not for each step of a slow start's weight ramp) or when
	// forced.
	snap := pool.Snapshot()
	lastReady := "-"
	showReady := func(force bool) {
		snap = pool.Snapshot()
		var members, parts []string
		for _, r := range snap.Ready {
			members = append(members, names[r.Endpoint.Addr()])
			parts = append(parts, fmt.Sprintf("%s(%.0f)", names[r.Endpoint.Addr()], r.Weight))
		}
		if m := strings.Join(members, " "); m != lastReady || force {
			lastReady = m
			say("ready   [%s]", strings.Join(parts, " "))
		}
	}

	// The checker follows the pool: every member is probed, with no list
	// of targets beside the pool's, and members that join wait out of the
	// ready set for their first verdict.
	err = chk.Follow(pool, health.Template{
		Probe:        health.HTTP{Path: "/healthz", AgentHeader: "X-Agent-State"},
		Interval:     200 * time.Millisecond,
		DownInterval: 100 * time.Millisecond,
		Timeout:      500 * time.Millisecond, // loopback answers in well under 1 ms; room for a loaded machine
		Rise:         2,
		Fall:         2,
	})
	if err != nil {
		return err
	}
	var members []balancer.Backend
	for _, b := range backends {
		members = append(members, balancer.Backend{Addr: b.addr, Weight: 100})
	}
	if err := pool.Set(members); err != nil {
		return err
	}
	showReady(false)

	// The client: one request through the pool every 5 ms, its outcome
	// reported to the endpoint (and so to passive outlier detection).
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	type tally struct{ ok, failed int }
	traffic := map[string]*tally{}
	var sent, failed int
	var key uint64
	request := func() {
		key++
		ep, err := pool.Pick(balancer.WithKey(balancer.Mix64(key)))
		if err != nil {
			return // nothing ready yet
		}
		t0 := time.Now()
		ep.Start()
		resp, err := client.Get("http://" + ep.Addr().String() + "/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		ep.Done(err, time.Since(t0))
		t := traffic[names[ep.Addr()]]
		if t == nil {
			t = &tally{}
			traffic[names[ep.Addr()]] = t
		}
		sent++
		if err != nil {
			failed++
			t.failed++
		} else {
			t.ok++
		}
	}
	showTraffic := func() {
		var parts []string
		for _, b := range backends {
			t := traffic[b.name]
			if t == nil {
				t = &tally{}
			}
			part := fmt.Sprintf("%s %d ok", b.name, t.ok)
			if t.failed > 0 {
				part += fmt.Sprintf(" %d failed", t.failed)
			}
			parts = append(parts, part)
		}
		say("traffic %s", strings.Join(parts, ", "))
		clear(traffic)
	}

	// wait sends requests, prints events and ready-set changes as they
	// come, and returns once until reports true (checked after each event
	// and each new snapshot; last is the latest event).
	var last health.Event
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	wait := func(what string, until func() bool) error {
		last = health.Event{}
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case e := <-events:
				last = e
				line := fmt.Sprintf("event   %-7s %s -> %s (%s)", names[e.Target], e.Prev, e.State, e.Reason)
				if e.Weight != 0 {
					line += fmt.Sprintf(" weight=%d", e.Weight)
				}
				if e.Err != nil {
					line += ": " + e.Err.Error()
				}
				say("%s", line)
			case <-snap.Changed():
				showReady(false)
			case <-tick.C:
				request()
				continue
			case <-timeout.C:
				return errors.New("health example: timed out waiting for " + what)
			}
			if until() {
				// The pool changes before the checker publishes the
				// event: show the ready set it led to.
				showReady(false)
				return nil
			}
		}
	}
	event := func(b *backend, state health.State, weight uint32) func() bool {
		return func() bool { return last.Target == b.addr && last.State == state && last.Weight == weight }
	}

	healthy := map[netip.AddrPort]bool{}
	if err := wait("the first verdicts", func() bool {
		if last.State == health.Healthy {
			healthy[last.Target] = true
		}
		return len(healthy) == len(backends)
	}); err != nil {
		return err
	}
	weights := func(want ...float64) func() bool {
		return func() bool {
			if len(snap.Ready) != len(want) {
				return false
			}
			for i, r := range snap.Ready {
				if r.Weight != want[i] {
					return false
				}
			}
			return true
		}
	}
	script := []struct {
		say   string
		step  func() error
		what  string
		until func() bool
	}{
		{"killing bravo", bravo.srv.Close, "bravo's ejection", event(bravo, health.Unhealthy, 0)},
		{"restarting bravo", func() error { return bravo.start(bravo.addr.String()) },
			"bravo's recovery", event(bravo, health.Healthy, 0)},
		{"charlie's agent says drain", func() error { charlie.agent.Store("drain"); return nil },
			"charlie's drain", event(charlie, health.Draining, 0)},
		{"charlie's agent says ready 50%", func() error { charlie.agent.Store("ready 50%"); return nil },
			"charlie's new weight", event(charlie, health.Healthy, 50)},
		{"waiting for the slow starts to end", func() error { return nil },
			"the slow starts", weights(100, 100, 50)},
	}
	for _, s := range script {
		showTraffic()
		say("script  %s", s.say)
		if err := s.step(); err != nil {
			return err
		}
		if err := wait(s.what, s.until); err != nil {
			return err
		}
	}
	showTraffic()
	showReady(true)
	say("done    %d requests, %d failed (sent to bravo between its death and its ejection)", sent, failed)
	for _, b := range []*backend{alpha, bravo, charlie} {
		st, _ := chk.Status(b.addr)
		fmt.Fprintf(w, "        %-7s state=%s probe=%s agent=%s weight=%d\n", b.name, st.State, st.Probe, st.Agent, st.Weight)
	}
	return nil
}
