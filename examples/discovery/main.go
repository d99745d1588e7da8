// Command discovery shows a pool whose members come from a members file
// and whose health comes from a checker that follows the pool: three
// HTTP backends run on loopback, the file is rewritten to add and remove
// them, one is stopped, and after each step the program prints the
// pool's ready set and which backends answered twelve requests. Nothing but
// the file tells the pool, the checker or the client about a backend. It
// exits by itself.
//
//	go run ./examples/discovery
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/discovery"
	"github.com/lbkit/lbkit/health"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "discovery example:", err)
		os.Exit(1)
	}
}

// backend is one loopback HTTP server that answers with its name.
type backend struct {
	name string
	addr netip.AddrPort
	srv  *http.Server
}

func startBackend(name string) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, addr: netip.MustParseAddrPort(ln.Addr().String())}
	b.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }),
		ReadHeaderTimeout: time.Second,
	}
	go b.srv.Serve(ln)
	return b, nil
}

func run(out io.Writer) error {
	quiet := slog.New(slog.DiscardHandler)
	backends := map[string]*backend{}
	names := map[netip.AddrPort]string{}
	for _, name := range []string{"alpha", "bravo", "charlie"} {
		b, err := startBackend(name)
		if err != nil {
			return err
		}
		defer b.srv.Close()
		backends[name], names[b.addr] = b, name
	}

	dir, err := os.MkdirTemp("", "lbkit-discovery-example")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "web.yaml")
	// writeMembers writes the members file, as an operator or a
	// deployment tool would: a new file renamed over the old one.
	writeMembers := func(list ...string) error {
		var b strings.Builder
		for _, name := range list {
			fmt.Fprintf(&b, "- addr: %s\n  meta: {name: %s}\n", backends[name].addr, name)
		}
		if len(list) == 0 {
			b.WriteString("[]\n")
		}
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	if err := writeMembers("alpha", "bravo"); err != nil {
		return err
	}

	pool, err := balancer.New(balancer.Config{Name: "web", Builder: roundrobin.Builder{}, Logger: quiet})
	if err != nil {
		return err
	}
	defer pool.Close()
	checker, err := health.New(health.Config{Logger: quiet})
	if err != nil {
		return err
	}
	defer checker.Close()
	err = checker.Follow(pool, health.Template{
		Probe:    health.HTTP{},
		Interval: 100 * time.Millisecond,
		Timeout:  time.Second,
		Rise:     1,
		Fall:     1,
	})
	if err != nil {
		return err
	}
	file, err := discovery.NewFile(discovery.FileConfig{Path: path, Debounce: 20 * time.Millisecond})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	synced := make(chan error, 1)
	go func() {
		synced <- (&discovery.Syncer{Pool: pool, Sources: []discovery.Source{file}, Logger: quiet}).Run(ctx)
	}()
	defer func() {
		cancel()
		<-synced
	}()

	client := &http.Client{Timeout: 2 * time.Second}
	step := func(what string, ready ...string) error {
		fmt.Fprintln(out, what)
		if err := waitReady(pool, names, ready); err != nil {
			return err
		}
		fmt.Fprintf(out, "  members: %s\n", strings.Join(memberNames(pool), " "))
		fmt.Fprintf(out, "  ready:   %s\n", strings.Join(ready, " "))
		answered := map[string]int{}
		for range 12 {
			ep, err := pool.Pick(balancer.PickInfo{})
			if err != nil {
				return err
			}
			ep.Start()
			start := time.Now()
			resp, err := client.Get("http://" + ep.Addr().String() + "/")
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			ep.Done(err, time.Since(start))
			if err != nil {
				return err
			}
			answered[string(body)]++
		}
		// Round robin spreads them evenly, but a new snapshot (a probe
		// verdict) may restart its rotation, so only who answered is
		// printed.
		fmt.Fprintf(out, "  12 requests answered by: %s\n", strings.Join(slices.Sorted(maps.Keys(answered)), " "))
		return nil
	}

	if err := step("file lists alpha and bravo", "alpha", "bravo"); err != nil {
		return err
	}
	if err := writeMembers("alpha", "bravo", "charlie"); err != nil {
		return err
	}
	if err := step("charlie added to the file", "alpha", "bravo", "charlie"); err != nil {
		return err
	}
	backends["charlie"].srv.Close()
	if err := step("charlie stopped: its probes fail, it stays a member", "alpha", "bravo"); err != nil {
		return err
	}
	if err := writeMembers("bravo", "charlie"); err != nil {
		return err
	}
	return step("alpha removed from the file", "bravo")
}

// waitReady waits until the pool's ready set is want (names), woken by
// each snapshot the pool publishes.
func waitReady(pool *balancer.Pool, names map[netip.AddrPort]string, want []string) error {
	timeout := time.After(10 * time.Second)
	for {
		s := pool.Snapshot()
		var got []string
		for _, w := range s.Ready {
			got = append(got, names[w.Endpoint.Addr()])
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return nil
		}
		select {
		case <-s.Changed():
		case <-timeout:
			return errors.New("timed out waiting for ready set " + strings.Join(want, " ") + ", have " + strings.Join(got, " "))
		}
	}
}

// memberNames returns the names of the pool's members, from their meta.
func memberNames(pool *balancer.Pool) []string {
	var out []string
	for _, ep := range pool.Snapshot().Members {
		out = append(out, ep.Meta("name"))
	}
	return out
}
