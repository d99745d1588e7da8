package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// capacity is a demo backend's capacity model, taken from the application
// servers of the write-up behind lbkit (10,000 requests at 1,000
// concurrency against one server). A backend has a fixed number of
// workers; a worker takes one connection at a time from the kernel's
// accept queue and serves it for a service time drawn from a log-normal
// distribution. While every worker is busy, new connections wait in the
// accept queue (the listen backlog); when that is full too, the kernel
// drops the client's SYN, and the client retransmits it after 1 s, 3 s,
// 7 s... or gives up (its timeout). A sync worker does the work of a
// request whose client has already given up, as a real one does, and
// then writes into a closed connection (the write-up's broken pipes).
type capacity struct {
	name    string
	about   string
	workers int           // connections served at once
	service time.Duration // mean service time of one request
	sigma   float64       // spread: standard deviation of ln(service time)
	backlog int           // listen backlog asked of the kernel (capped by somaxconn)
	// keepAlive: a worker keeps serving its connection's further
	// requests (cheap workers: gevent). Sync workers answer with
	// "Connection: close" and take the next connection.
	keepAlive bool
	// writeUp is what the write-up measured for one such server alone.
	writeUp string
}

// The presets, named after the write-up's setups. The backlogs are the
// servers' own defaults: Django's development server asks for 10, uwsgi
// for 100 (the write-up raised somaxconn when uwsgi complained), gunicorn
// for 2048. The workers are the write-up's 4 processes × 2 threads for
// uwsgi, gunicorn's recommended 2 × cores + 1 sync workers for its 2-core
// machine, and gevent's default of 1,000 connections per worker.
//
// The time scale is the demo's, chosen by measuring on a shared 2-core
// machine so that the default run (5 gunicorn backends, a client that
// gives up after 1.5 s) takes under a minute: one gunicorn alone serves
// 500 requests/s, so 1,000 clients would wait 2 s for it and it collapses
// (its workers serve requests whose clients have left); five behind any
// balancer keep the wait near 0.5 s, with room for one to die. The same
// 10 ms application runs on every server but the development server,
// whose 3 ms puts one alone near the write-up's 14 % here (it measured
// 9 % at 10 ms, 12 % at 4 ms, 22 % at 2 ms).
var presets = []capacity{
	{name: "devserver", about: "a framework's development server",
		workers: 1, service: 3 * time.Millisecond, sigma: 0.5, backlog: 10, writeUp: "14 %"},
	{name: "uwsgi", about: "uwsgi, 4 processes × 2 threads, listen queue 100",
		workers: 8, service: 10 * time.Millisecond, sigma: 0.5, backlog: 100, writeUp: "~90 %"},
	{name: "gunicorn", about: "gunicorn with sync workers",
		workers: 5, service: 10 * time.Millisecond, sigma: 0.5, backlog: 2048, writeUp: "~90 %"},
	{name: "gevent", about: "gunicorn with gevent workers",
		workers: 1000, service: 10 * time.Millisecond, sigma: 0.5, backlog: 2048, keepAlive: true, writeUp: "100 %"},
}

// writeUpFigures are the write-up's own results, one server alone, in its
// order.
const writeUpFigures = "dev server 14 %, behind nginx 37 %, uwsgi ~90 %, gunicorn ~90 %, gevent 100 %"

// preset returns the named preset.
func preset(name string) (capacity, error) {
	var names []string
	for _, p := range presets {
		if p.name == name {
			return p, nil
		}
		names = append(names, p.name)
	}
	return capacity{}, fmt.Errorf("unknown backend %q (one of %s)", name, strings.Join(names, ", "))
}

// String says what the model is, for the demo's header.
func (c capacity) String() string {
	ka := "closes after each response"
	if c.keepAlive {
		ka = "keep-alive"
	}
	return fmt.Sprintf("%s (%s): %d workers, service time %v mean (log-normal, σ %.1f), backlog %d, %s",
		c.name, c.about, c.workers, c.service, c.sigma, c.backlog, ka)
}

// serviceTime draws one service time: log-normal with mean c.service.
func (c capacity) serviceTime() time.Duration {
	if c.service <= 0 {
		return 0
	}
	// mean = exp(mu + sigma²/2)
	mu := math.Log(float64(c.service)) - c.sigma*c.sigma/2
	return time.Duration(math.Exp(mu + c.sigma*rand.NormFloat64()))
}

// somaxconn is the kernel's cap on listen backlogs (0 when unknown).
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
}

// backlogNote says what the kernel makes of c's backlog.
func (c capacity) backlogNote() string {
	maxq := somaxconn()
	switch {
	case maxq == 0:
		return fmt.Sprintf("listen backlog %d asked (somaxconn unknown)", c.backlog)
	case c.backlog > maxq:
		return fmt.Sprintf("listen backlog %d asked, somaxconn %d caps it at %d", c.backlog, maxq, maxq)
	default:
		return fmt.Sprintf("listen backlog %d asked, somaxconn %d allows it", c.backlog, maxq)
	}
}

// setBacklog sets ln's listen backlog: listen(2) again on a listening
// socket changes its backlog (Go listens with somaxconn).
func setBacklog(ln net.Listener, n int) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return fmt.Errorf("backlog: %T is not a TCP listener", ln)
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), n) }); err != nil {
		return err
	}
	return lerr
}

// backend is one demo backend: an HTTP server with a capacity model on its
// own address.
type backend struct {
	addr  netip.AddrPort
	model capacity
	srv   *http.Server
	ln    *workerListener
	count atomic.Int64 // requests served (including those whose client left)
	dead  atomic.Bool
	stop  chan struct{} // closed by kill: workers stop at once, as a killed process's do
	done  chan struct{}
}

// startBackends starts n backends with model m on 127.0.0.11, 127.0.0.12,
// ... all on one port, so DNS answers (addresses only) can name them.
func startBackends(n int, m capacity) ([]*backend, error) {
	for range 20 {
		bs, err := tryStartBackends(n, m)
		if err == nil {
			return bs, nil
		}
	}
	return nil, errors.New("could not find a free port on 127.0.0.11 and up")
}

func tryStartBackends(n int, m capacity) ([]*backend, error) {
	var bs []*backend
	port := uint16(0)
	for i := range n {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)})
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
		if err == nil {
			ap := netip.MustParseAddrPort(ln.Addr().String())
			port = ap.Port()
			var b *backend
			if b, err = newBackend(ln, ap, i, m); err == nil {
				bs = append(bs, b)
				continue
			}
		}
		for _, b := range bs {
			b.kill()
		}
		return nil, err
	}
	return bs, nil
}

// newBackend serves HTTP on ln as backend number i (counting from 0),
// reachable at addr, with capacity model m. It owns ln.
func newBackend(ln net.Listener, addr netip.AddrPort, i int, m capacity) (*backend, error) {
	if m.workers < 1 {
		_ = ln.Close()
		return nil, fmt.Errorf("backend %v: %d workers", addr, m.workers)
	}
	if err := setBacklog(ln, m.backlog); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("backend %v: %w", addr, err)
	}
	wl := &workerListener{Listener: ln, workers: make(chan struct{}, m.workers), closed: make(chan struct{})}
	b := &backend{addr: addr, model: m, ln: wl, stop: make(chan struct{}), done: make(chan struct{})}
	body := []byte(fmt.Sprintf("hello from backend %d\n", i+1))
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.count.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
			// The worker is busy for the service time whether or not
			// the client is still there (a sync worker cannot tell).
			t := time.NewTimer(m.serviceTime())
			defer t.Stop()
			select {
			case <-t.C:
			case <-b.stop:
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			if !m.keepAlive {
				w.Header().Set("Connection", "close")
			}
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	go func() {
		defer close(b.done)
		_ = b.srv.Serve(wl)
	}()
	return b, nil
}

// kill stops the backend at once: listener closed, connections cut.
func (b *backend) kill() {
	if b.dead.Swap(true) {
		return
	}
	close(b.stop)
	b.ln.shut()
	_ = b.srv.Close()
	<-b.done
}

// workerListener hands out a connection only when a worker is free: until
// then, connections wait in the kernel's accept queue. A worker is free
// again when its connection closes.
type workerListener struct {
	net.Listener
	workers  chan struct{} // one token per busy worker
	closed   chan struct{}
	shutOnce sync.Once
}

// Accept waits for a free worker, then for a connection.
func (l *workerListener) Accept() (net.Conn, error) {
	select {
	case l.workers <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.workers
		return nil, err
	}
	return &workerConn{Conn: c, free: func() { <-l.workers }}, nil
}

// shut makes Accept return at once, even while it waits for a worker.
func (l *workerListener) shut() {
	l.shutOnce.Do(func() { close(l.closed) })
	_ = l.Listener.Close()
}

// workerConn frees its worker when it is closed (once).
type workerConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *workerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
