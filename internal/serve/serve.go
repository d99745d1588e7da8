// Package serve holds the connection-serving lifecycle shared by lbkit's
// servers (redirect.Server, proxy.Server, tcpproxy.Server): a registry of
// listeners and open connections, an accept loop that backs off on
// temporary errors, closing on context cancellation, and a graceful
// Shutdown that waits for connections until its context ends.
//
// The servers keep everything about a single connection: how it is
// wrapped, served, woken for Shutdown and released. The package adds no
// work per request; per connection it takes the group's mutex twice
// (when the connection joins and when it leaves).
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Conn is what a [Group] tracks per connection: a net.Conn or a server's
// own connection state. Close must be safe to call concurrently with the
// connection being served and more than once; the group calls it to force
// the connection shut.
type Conn interface {
	comparable
	Close() error
}

// Temporary reports the accept errors the accept loop retries after a
// pause when [Config.Temporary] is nil: running out of file descriptors
// or buffers, and handshakes aborted before accept.
func Temporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

// Config describes one server to [Group.Serve]: its names for errors and
// logs and what it does with each accepted connection. Open and Serve are
// required.
type Config[C Conn] struct {
	// Name prefixes log messages and errors ("redirect", "proxy").
	Name string
	// Closed is the error Serve returns once Shutdown was called.
	Closed error
	// Logger receives accept errors that are retried. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Temporary reports accept errors to retry after a pause. Nil means
	// the package's [Temporary].
	Temporary func(error) bool
	// OwnConns limits what the end of Serve's context closes to the
	// connections that Serve call accepted; otherwise it closes every
	// connection of the group.
	OwnConns bool

	// Open wraps a connection Serve accepted; ctx is Serve's. It runs on
	// Serve's goroutine, before the connection joins the group.
	Open func(ctx context.Context, c net.Conn) C
	// Serve serves a connection on its own goroutine and is responsible
	// for closing it (or handing it over). Shutdown waits for it.
	// Required unless ServePark is set.
	Serve func(c C)
	// ServePark, if not nil, replaces Serve for a server that parks idle
	// connections without a goroutine: it returns true when it parked c
	// (and must not touch c any more: another goroutine may own it
	// already). A parked connection stays in the group — Shutdown waits
	// for it, Close and the end of Serve's context close it — until the
	// server resumes it by calling, on a new goroutine, the function
	// [Group.Resumer] returned for it.
	ServePark func(c C) (parked bool)
	// Release, if not nil, runs once the connection left the group: after
	// Serve returned, or, for a connection that arrived as the group was
	// closing and was never served, after the group closed it. Shutdown
	// waits for it.
	Release func(c C)
}

// Group tracks a server's listeners and connections. The zero value is
// ready to use; a Group must not be copied after first use. All methods
// are safe for concurrent use.
type Group[C Conn] struct {
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[C]net.Listener // the listener a connection came from
	idle      chan struct{}      // closed when conns empties while closing
	closing   atomic.Bool
	wg        sync.WaitGroup
}

// Closing reports whether Shutdown was called. It takes no lock, so a
// connection may ask before every request.
func (g *Group[C]) Closing() bool { return g.closing.Load() }

// Listen listens on the TCP address addr, with errors prefixed by name.
func Listen(ctx context.Context, name, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ln, nil
}

// Serve accepts connections on ln and hands each to cfg.Serve on a new
// goroutine until ctx ends, [Group.Shutdown] is called or ln fails. It
// closes ln before returning. When ctx ends it closes ln and the
// connections (all of the group's, or with cfg.OwnConns those this call
// accepted) and returns ctx.Err(); after Shutdown it returns cfg.Closed;
// when ln fails with an error that is not temporary it returns that
// error, prefixed with cfg.Name. Temporary accept errors are logged and
// retried after a pause that doubles from 5ms to 1s.
func (g *Group[C]) Serve(ctx context.Context, ln net.Listener, cfg *Config[C]) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	temporary := cfg.Temporary
	if temporary == nil {
		temporary = Temporary
	}
	g.mu.Lock()
	if g.closing.Load() {
		g.mu.Unlock()
		ln.Close()
		return cfg.Closed
	}
	if g.listeners == nil {
		g.listeners = make(map[net.Listener]struct{})
		g.conns = make(map[C]net.Listener)
	}
	g.listeners[ln] = struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.listeners, ln)
		g.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		g.mu.Lock()
		for c, from := range g.conns {
			if !cfg.OwnConns || from == ln {
				c.Close()
			}
		}
		g.mu.Unlock()
	})
	defer stop()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case g.closing.Load():
				return cfg.Closed
			case temporary(err):
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn(cfg.Name+": accept failed; retrying", "err", err, "in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			return fmt.Errorf("%s: accept: %w", cfg.Name, err)
		}
		backoff = 0
		c := cfg.Open(ctx, nc)
		// Joining under the lock, after looking at ctx, means the
		// AfterFunc above either sees c or c is refused here.
		g.mu.Lock()
		if g.closing.Load() || ctx.Err() != nil {
			g.mu.Unlock()
			c.Close()
			if cfg.Release != nil {
				cfg.Release(c)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return cfg.Closed
		}
		g.conns[c] = ln
		g.wg.Add(1)
		g.mu.Unlock()
		go g.run(cfg, c)
	}
}

// Resumer returns the function that serves c again after
// cfg.ServePark parked it: call it on a new goroutine (go f()), once per
// park. Keep it with the connection: calling it allocates nothing.
func (g *Group[C]) Resumer(cfg *Config[C], c C) func() {
	return func() { g.run(cfg, c) }
}

// Len returns the number of connections in the group.
func (g *Group[C]) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// Each calls f with every connection of the group, with the group's lock
// held: f must not block, nor call the group's methods.
func (g *Group[C]) Each(f func(C)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		f(c)
	}
}

func (g *Group[C]) run(cfg *Config[C], c C) {
	if cfg.ServePark != nil {
		if cfg.ServePark(c) {
			return // parked: still in the group and counted in wg
		}
	} else {
		cfg.Serve(c)
	}
	defer g.wg.Done()
	g.mu.Lock()
	delete(g.conns, c)
	if g.closing.Load() && len(g.conns) == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
	g.mu.Unlock()
	if cfg.Release != nil {
		cfg.Release(c)
	}
}

// Shutdown stops the group gracefully: it makes Serve return (and refuse
// to start) with its Closed error, closes every listener, calls wake (if
// not nil) on each open connection, with the group's lock held, so one
// waiting for a request can notice [Group.Closing], and waits for the
// connections to finish. When ctx ends first it closes those left. Either
// way it returns only when every connection's Serve and Release returned:
// nil if they finished by themselves, ctx.Err() if it had to force.
func (g *Group[C]) Shutdown(ctx context.Context, wake func(C)) error {
	g.mu.Lock()
	g.closing.Store(true)
	for ln := range g.listeners {
		ln.Close()
	}
	var idle chan struct{}
	if len(g.conns) > 0 {
		if wake != nil {
			for c := range g.conns {
				wake(c)
			}
		}
		if g.idle == nil {
			g.idle = make(chan struct{})
		}
		idle = g.idle
	}
	g.mu.Unlock()

	var err error
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
			g.mu.Lock()
			for c := range g.conns {
				c.Close()
			}
			g.mu.Unlock()
		}
	}
	g.wg.Wait()
	return err
}

// Run is Serve with the lifecycle every lbkit server documents: Serve
// called on a stopped group returns cfg.Closed at once; the end of ctx
// means Close (listeners and every connection closed, the group stopped
// for good); and a Serve stopped by ctx, Shutdown or Close returns nil.
// Only a failing listener makes it return an error.
func (g *Group[C]) Run(ctx context.Context, ln net.Listener, cfg *Config[C]) error {
	if g.closing.Load() {
		ln.Close()
		return cfg.Closed
	}
	err := g.Serve(ctx, ln, cfg)
	if ctx.Err() != nil {
		g.Close()
		return nil
	}
	if errors.Is(err, cfg.Closed) {
		return nil
	}
	return err
}

// Close stops the group now: Shutdown with a context that has already
// ended, so listeners and connections are closed at once. It waits for
// the connections' Serve and Release to return. It is idempotent.
func (g *Group[C]) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.Shutdown(ctx, nil)
}
