package tcpproxy

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// serving is a server under test whose Serve runs on its own goroutine.
type serving struct {
	*Server
	addr   string
	served chan error
}

// serveOn starts a server for an echo backend; the test stops it.
func serveOn(t *testing.T, ctx context.Context) serving {
	t.Helper()
	b := startBackend(t, echo)
	p, err := New(Config{Pool: newPool(t, nil, b.addr), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ln := listen(t)
	s := serving{p, ln.Addr().String(), make(chan error, 1)}
	go func() { s.served <- p.Serve(ctx, ln) }()
	return s
}

// open dials s and checks that the connection works.
func (s serving) open(t *testing.T) net.Conn {
	t.Helper()
	c := dial(t, s.addr)
	ping(t, c)
	return c
}

// closed reports whether c was closed by the proxy.
func closed(c net.Conn) bool {
	_, err := c.Read(make([]byte, 1))
	return err != nil
}

func TestShutdownDrains(t *testing.T) {
	s := serveOn(t, context.Background())
	c := s.open(t)

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	require.NoError(t, <-s.served, "Serve returns nil once Shutdown closed the listener")

	// New connections are refused; the open one keeps working.
	_, err := net.DialTimeout("tcp", s.addr, wait)
	assert.Error(t, err)
	ping(t, c)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a connection open", err)
	default:
	}
	c.Close()
	select {
	case err := <-shut:
		assert.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
	assert.ErrorIs(t, s.Serve(context.Background(), listen(t)), ErrServerClosed)
	assert.ErrorIs(t, s.ListenAndServe(context.Background(), "127.0.0.1:0"), ErrServerClosed)
	assert.NoError(t, s.Shutdown(context.Background()), "idempotent")
	assert.NoError(t, s.Close())
}

func TestShutdownForced(t *testing.T) {
	s := serveOn(t, context.Background())
	c := s.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	require.NoError(t, <-s.served)
	cancel()
	assert.ErrorIs(t, <-shut, context.Canceled)
	assert.True(t, closed(c), "the connection left open was closed")
}

// TestClose: Close stops at once: the listener and open connections are
// closed, Serve returns nil, and later Serve calls fail.
func TestClose(t *testing.T) {
	s := serveOn(t, context.Background())
	c := s.open(t)
	require.NoError(t, s.Close())
	assert.True(t, closed(c), "Close closes open connections")
	assert.NoError(t, <-s.served)
	_, err := net.DialTimeout("tcp", s.addr, wait)
	assert.Error(t, err)
	assert.ErrorIs(t, s.Serve(context.Background(), listen(t)), ErrServerClosed)
	assert.NoError(t, s.Close(), "idempotent")
	assert.NoError(t, s.Shutdown(context.Background()))
}

func TestCloseBeforeServe(t *testing.T) {
	p, err := New(Config{Pool: newPool(t, nil)})
	require.NoError(t, err)
	require.NoError(t, p.Close())
	ln := listen(t)
	assert.ErrorIs(t, p.Serve(context.Background(), ln), ErrServerClosed)
	_, err = ln.Accept()
	assert.ErrorIs(t, err, net.ErrClosed, "Serve closed the listener it was given")
}

// TestServeContext: ending Serve's context means Close: connections are
// closed, Serve returns nil, the server is stopped for good.
func TestServeContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s := serveOn(t, ctx)
	c := s.open(t)
	cancel()
	assert.NoError(t, <-s.served)
	assert.True(t, closed(c), "Serve's connections are closed when ctx ends")
	assert.ErrorIs(t, s.Serve(context.Background(), listen(t)), ErrServerClosed)
	require.NoError(t, s.Shutdown(context.Background()))
}

// TestTwoListeners: one server serves two listeners; Shutdown stops both.
func TestTwoListeners(t *testing.T) {
	s := serveOn(t, context.Background())
	ln := listen(t)
	second := make(chan error, 1)
	go func() { second <- s.Serve(context.Background(), ln) }()
	s.open(t).Close()
	ping(t, dial(t, ln.Addr().String()))
	require.NoError(t, s.Close())
	assert.NoError(t, <-s.served)
	assert.NoError(t, <-second)
}

func TestListenAndServe(t *testing.T) {
	p, err := New(Config{Pool: newPool(t, nil)})
	require.NoError(t, err)
	assert.Error(t, p.ListenAndServe(context.Background(), "198.18.0.1:bad"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.NoError(t, p.ListenAndServe(ctx, "127.0.0.1:0"), "an ended ctx stops the server")
	assert.ErrorIs(t, p.ListenAndServe(context.Background(), "127.0.0.1:0"), ErrServerClosed, "for good")
}

// TestPoolNotClosed: neither Shutdown nor Close closes the pool the
// server was given. A closed pool stops ramping weights (slow start), so a
// member that joins later would start at full weight.
func TestPoolNotClosed(t *testing.T) {
	pool, err := balancer.New(balancer.Config{Builder: roundrobin.Builder{}, SlowStart: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer pool.Close()
	b1, b2 := startBackend(t, echo), startBackend(t, echo)
	require.NoError(t, pool.Add(balancer.Backend{Addr: b1.addr}))
	for _, stop := range []func(*Server) error{
		func(p *Server) error { return p.Shutdown(context.Background()) },
		(*Server).Close,
	} {
		p, err := New(Config{Pool: pool, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		ln := listen(t)
		served := make(chan error, 1)
		go func() { served <- p.Serve(context.Background(), ln) }()
		c := dial(t, ln.Addr().String())
		ping(t, c)
		c.Close()
		require.NoError(t, stop(p))
		require.NoError(t, <-served)
	}
	require.NoError(t, pool.Add(balancer.Backend{Addr: b2.addr}))
	var joined float64
	for _, w := range pool.Snapshot().Ready {
		if w.Endpoint.Addr() == b2.addr {
			joined = w.Weight
		}
	}
	assert.Less(t, joined, 0.5, "a member joining later still slow-starts: the pool is open")
}
