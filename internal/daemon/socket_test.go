package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/testnet"
)

// servedTypes records the type of every listener the daemon gives a
// server, by listener name.
type servedTypes struct {
	mu    sync.Mutex
	types map[string][]string
}

func (s *servedTypes) record(name string, ln net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.types == nil {
		s.types = make(map[string][]string)
	}
	s.types[name] = append(s.types[name], fmt.Sprintf("%T", ln))
}

func (s *servedTypes) get(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.types[name]...)
}

// TestReloadServesTCPListeners reloads the HTTP and redirect listeners
// (each reload builds them new servers) and the TCP listener (updated in
// place) under steady load: every server is given a *net.TCPListener, so
// their paths for TCP listeners run, no request fails, and once the
// daemon stops every port is free again (no duplicate descriptor left
// open).
func TestReloadServesTCPListeners(t *testing.T) {
	be := backends(t, 2)
	free := testnet.FreeAddrs(t, 3)
	httpAddr, rdAddr, tcpAddr := free[0], free[1], free[2]
	cfgFor := func(gen int) *config.Config {
		text := fmt.Sprintf(`shutdown_timeout: 5s
pools:
  - name: web
    members: [{addr: %s}, {addr: %s}]
listeners:
  - {name: web, type: http, addr: %s, pool: web, max_idle_conns: %d}
  - {name: rd, type: redirect, addr: %s, pool: web, retry_after: %ds}
  - {name: tcp, type: tcp, addr: %s, pool: web, connect_attempts: %d}
`, be[0], be[1], httpAddr, 10+gen, rdAddr, 1+gen, tcpAddr, 2+gen)
		cfg, err := config.Parse("test.yaml", []byte(text))
		require.NoError(t, err)
		return cfg
	}
	var served servedTypes
	d := New(Options{AdminAddr: "off", Logger: slog.New(slog.DiscardHandler)})
	d.served = served.record
	require.NoError(t, d.Start(cfgFor(0)))
	stopped := false
	defer func() {
		if !stopped {
			d.Close()
		}
	}()
	(&fixture{t: t, d: d}).waitReady(2)

	// Clients: kept-alive and new connections to the HTTP listener, new
	// connections to the redirect and TCP listeners. Each success ticks.
	var ok, failed atomic.Int64
	errs := make(chan string, 16)
	tick := make(chan struct{}, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, kind := range []string{"http-keepalive", "http", "redirect", "tcp"} {
		wg.Go(func() {
			tr := &http.Transport{DisableKeepAlives: kind != "http-keepalive"}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: 10 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			for range 100_000 {
				if ctx.Err() != nil {
					return
				}
				if err := loadOnce(hc, kind, httpAddr, rdAddr, tcpAddr); err != nil {
					failed.Add(1)
					select {
					case errs <- kind + ": " + err.Error():
					default:
					}
					continue
				}
				ok.Add(1)
				select {
				case tick <- struct{}{}:
				default:
				}
			}
		})
	}
	// progress waits until requests succeed after the last reload.
	progress := func() {
		for range 50 {
			select {
			case <-tick:
			case <-ctx.Done():
				t.Fatal("no progress")
			}
		}
	}
	const reloads = 8
	progress()
	for gen := 1; gen <= reloads; gen++ {
		require.NoError(t, d.Apply(cfgFor(gen), "test"))
		progress()
	}
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("failed request: %s", e)
	}
	assert.Zero(t, failed.Load())
	t.Logf("%d requests over %d reloads", ok.Load(), reloads)

	for name, n := range map[string]int{"web": 1 + reloads, "rd": 1 + reloads, "tcp": 1} {
		got := served.get(name)
		assert.Len(t, got, n, "%s: one listener per server", name)
		for _, typ := range got {
			assert.Equal(t, "*net.TCPListener", typ, name)
		}
	}

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	require.NoError(t, d.Shutdown(sctx))
	stopped = true
	for _, addr := range free {
		ln, err := net.Listen("tcp", addr)
		require.NoError(t, err, "%s is still open after Shutdown", addr)
		ln.Close()
	}
}

// loadOnce makes one request of the kind and checks its answer.
func loadOnce(hc *http.Client, kind, httpAddr, rdAddr, tcpAddr string) error {
	switch kind {
	case "redirect":
		resp, err := hc.Get("http://" + rdAddr + "/x")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), "http://127.0.0.1:") {
			return fmt.Errorf("status %d location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		return nil
	case "tcp":
		httpAddr = tcpAddr
	}
	resp, err := hc.Get("http://" + httpAddr + "/")
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "b") {
		return fmt.Errorf("status %d body %q", resp.StatusCode, body)
	}
	return nil
}

// slowBackend starts a backend whose requests each announce themselves on
// arrived and wait for release to be closed before answering "slow".
func slowBackend(t *testing.T) (addr string, arrived, release chan struct{}) {
	arrived, release = make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "slow")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), arrived, release
}

// slowConfig declares pool web of the one member and, with http set, an
// HTTP listener on addr; a TCP listener on other keeps the configuration
// from being empty.
func slowConfig(t *testing.T, member, addr, other string, http bool, maxIdle int) *config.Config {
	text := fmt.Sprintf(`shutdown_timeout: 10s
pools:
  - name: web
    members: [{addr: %s}]
listeners:
  - {name: tcp, type: tcp, addr: %s, pool: web}
`, member, other)
	if http {
		text += fmt.Sprintf("  - {name: web, type: http, addr: %s, pool: web, max_idle_conns: %d}\n", addr, maxIdle)
	}
	cfg, err := config.Parse("test.yaml", []byte(text))
	require.NoError(t, err)
	return cfg
}

type result struct {
	body string
	err  error
}

// request starts a GET of addr and returns where its outcome will be.
func request(addr string) <-chan result {
	res := make(chan result, 1)
	go func() {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{string(b), err}
	}()
	return res
}

// TestRemovedListenerClosesItsSocket removes an HTTP listener while a
// request is in flight on it: its port refuses connections at once, the
// request still finishes (the server drains), and then the port is free.
func TestRemovedListenerClosesItsSocket(t *testing.T) {
	member, arrived, release := slowBackend(t)
	free := testnet.FreeAddrs(t, 2)
	d := New(Options{AdminAddr: "off", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, d.Start(slowConfig(t, member, free[0], free[1], true, 0)))
	defer d.Close()
	(&fixture{t: t, d: d}).waitReady(1)
	d.mu.Lock()
	web := d.listeners["web"]
	d.mu.Unlock()

	res := request(free[0])
	<-arrived
	require.NoError(t, d.Apply(slowConfig(t, member, free[0], free[1], false, 0), "test"))
	assert.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", free[0], time.Second)
		if err != nil {
			return errors.Is(err, syscall.ECONNREFUSED)
		}
		c.Close()
		return false
	}, 5*time.Second, 5*time.Millisecond, "the removed listener's port still accepts while it drains")

	close(release)
	r := <-res
	require.NoError(t, r.err)
	assert.Equal(t, "slow", r.body, "the request in flight finishes")
	<-web.done
	ln, err := net.Listen("tcp", free[0])
	require.NoError(t, err, "the removed listener's port is still open")
	ln.Close()
}

// TestStopEndsRetiredServers stops the daemon while a server replaced by
// a reload drains a request: Close ends it at once, Shutdown when its
// context ends, not when the retired server's own drain timeout does.
func TestStopEndsRetiredServers(t *testing.T) {
	for _, how := range []string{"close", "shutdown"} {
		t.Run(how, func(t *testing.T) {
			member, arrived, release := slowBackend(t)
			defer close(release)
			free := testnet.FreeAddrs(t, 2)
			d := New(Options{AdminAddr: "off", Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, d.Start(slowConfig(t, member, free[0], free[1], true, 10)))
			defer d.Close()
			(&fixture{t: t, d: d}).waitReady(1)

			res := request(free[0])
			<-arrived
			require.NoError(t, d.Apply(slowConfig(t, member, free[0], free[1], true, 20), "test"))
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				if how == "close" {
					d.Close()
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				d.Shutdown(ctx)
			}()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatal("the daemon waits for the retired server's drain")
			}
			assert.Error(t, (<-res).err, "the request in flight is cut")
		})
	}
}

// TestSocketGenerations drives a socket through two server generations:
// each gets a listener of its own (a duplicate for TCP, a virtual one fed
// by the acceptor for a unix socket); the second takes the connections
// once activated and the first closed, the socket staying open between
// them; close, with the generations' listeners closed, closes it.
func TestSocketGenerations(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = t.TempDir() + "/s"
			}
			ln, err := net.Listen(network, addr)
			require.NoError(t, err)
			addr = ln.Addr().String()
			s := newSocket(ln, slog.New(slog.DiscardHandler))
			want := map[string]string{"tcp": "*net.TCPListener", "unix": "*daemon.vlistener"}[network]

			// accepted dials the socket and checks that gen accepts the
			// connection.
			accepted := func(gen net.Listener) {
				t.Helper()
				c, err := net.Dial(network, addr)
				require.NoError(t, err)
				defer c.Close()
				a, err := gen.Accept()
				require.NoError(t, err)
				a.Close()
			}
			first := s.listener()
			assert.Equal(t, want, fmt.Sprintf("%T", first))
			s.activate(first)
			accepted(first)

			second := s.listener()
			assert.Equal(t, want, fmt.Sprintf("%T", second))
			s.activate(second)
			require.NoError(t, first.Close())
			_, err = first.Accept()
			require.ErrorIs(t, err, net.ErrClosed)
			accepted(second)
			accepted(second)

			s.close()
			second.Close()
			_, err = net.Dial(network, addr)
			require.Error(t, err, "the socket is still open")
		})
	}
}
