// Command health shows lbkit's health plane keeping a balancer pool in
// step with its backends: three HTTP backends on loopback are checked by
// HTTP probes, one is killed, another is drained by its agent header and
// a third has its weight changed, while a client sends requests through
// the pool and reports their outcomes. It prints every health event and
// every change of the pool's ready set, and exits by itself after a few
// seconds.
//
//	go run ./examples/health
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
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

func startBackend(name string) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, addr: netip.MustParseAddrPort(ln.Addr().String())}
	b.agent.Store("up")
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Agent-State", b.agent.Load().(string))
			io.WriteString(w, "ok from "+name+"\n")
		}),
		ReadHeaderTimeout: time.Second,
	}
	go b.srv.Serve(ln)
	return b, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "health example:", err)
		os.Exit(1)
	}
}

func run() error {
	start := time.Now()
	stamp := func() string { return fmt.Sprintf("%5.2fs", time.Since(start).Seconds()) }

	var backends []*backend
	names := map[netip.AddrPort]string{}
	for _, name := range []string{"alpha", "bravo", "charlie"} {
		b, err := startBackend(name)
		if err != nil {
			return err
		}
		defer b.srv.Close()
		backends = append(backends, b)
		names[b.addr] = name
	}

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

	unsubscribe := chk.Subscribe(func(e health.Event) {
		line := fmt.Sprintf("%s event   %-7s %s -> %s (%s)", stamp(), names[e.Target], e.Prev, e.State, e.Reason)
		if e.Weight != 0 {
			line += fmt.Sprintf(" weight=%d", e.Weight)
		}
		if e.Err != nil {
			line += ": " + e.Err.Error()
		}
		fmt.Println(line)
	})
	defer unsubscribe()

	var members []balancer.Backend
	for _, b := range backends {
		members = append(members, balancer.Backend{Addr: b.addr, Weight: 100})
	}
	if err := pool.Set(members); err != nil {
		return err
	}
	// The checker follows the pool: every member is probed, with no list
	// of targets beside the pool's.
	err = chk.Follow(pool, health.Template{
		Probe:        health.HTTP{Path: "/healthz", AgentHeader: "X-Agent-State"},
		Interval:     200 * time.Millisecond,
		DownInterval: 100 * time.Millisecond,
		Timeout:      150 * time.Millisecond,
		Rise:         2,
		Fall:         2,
	})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Print the ready set whenever its membership changes (snapshots
	// that only ramp a slow-starting weight are skipped), with effective
	// weights.
	wg.Go(func() {
		last := "-"
		for {
			s := pool.Snapshot()
			var members, parts []string
			for _, w := range s.Ready {
				members = append(members, names[w.Endpoint.Addr()])
				parts = append(parts, fmt.Sprintf("%s(%.0f)", names[w.Endpoint.Addr()], w.Weight))
			}
			if m := strings.Join(members, " "); m != last {
				last = m
				fmt.Printf("%s ready   [%s]\n", stamp(), strings.Join(parts, " "))
			}
			select {
			case <-s.Changed():
			case <-ctx.Done():
				return
			}
		}
	})

	// A client sends requests through the pool and reports outcomes.
	var sent, failed atomic.Int64
	wg.Go(func() {
		client := &http.Client{Timeout: time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
		defer client.CloseIdleConnections()
		for i := uint64(0); ctx.Err() == nil; i++ {
			ep, err := pool.Pick(balancer.WithKey(balancer.Mix64(i)))
			if err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			t0 := time.Now()
			ep.Start()
			resp, err := client.Get("http://" + ep.Addr().String() + "/")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			rtt := time.Since(t0)
			ep.Done(err, rtt)
			sent.Add(1)
			if err != nil {
				failed.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	script := []struct {
		at   time.Duration
		say  string
		step func()
	}{
		{1000 * time.Millisecond, "killing bravo", func() { backends[1].srv.Close() }},
		{2000 * time.Millisecond, "charlie's agent says drain", func() { backends[2].agent.Store("drain") }},
		{2600 * time.Millisecond, "charlie's agent says ready 50%", func() { backends[2].agent.Store("ready 50%") }},
	}
	for _, s := range script {
		select {
		case <-time.After(time.Until(start.Add(s.at))):
		case <-ctx.Done():
		}
		fmt.Printf("%s script  %s\n", stamp(), s.say)
		s.step()
	}
	<-ctx.Done()
	wg.Wait()
	var parts []string
	for _, w := range pool.Snapshot().Ready {
		parts = append(parts, fmt.Sprintf("%s(%.0f)", names[w.Endpoint.Addr()], w.Weight))
	}
	fmt.Printf("%s ready   [%s]\n", stamp(), strings.Join(parts, " "))
	fmt.Printf("%s done    %d requests, %d failed (sent to bravo between its death and its ejection)\n", stamp(), sent.Load(), failed.Load())
	for _, b := range backends {
		st, _ := chk.Status(b.addr)
		fmt.Printf("        %-7s state=%s probe=%s agent=%s weight=%d\n", b.name, st.State, st.Probe, st.Agent, st.Weight)
	}
	return nil
}
