package serve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errClosed = errors.New("test: closed")

// fakeListener returns what is sent on accepts, and net.ErrClosed once
// closed. Before each Accept returns, hook (if set) runs.
type fakeListener struct {
	accepts chan acceptResult
	done    chan struct{}
	once    sync.Once
	hook    func()
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newFakeListener() *fakeListener {
	return &fakeListener{accepts: make(chan acceptResult), done: make(chan struct{})}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case r := <-l.accepts:
		if l.hook != nil {
			l.hook()
		}
		return r.c, r.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{} }

func (l *fakeListener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// conn is a tracked test connection: the server side of a pipe.
type conn struct {
	net.Conn
	peer net.Conn
}

// server serves each conn by reading until it fails, and records what
// was released.
type server struct {
	mu       sync.Mutex
	released []*conn
}

func (s *server) config(name string) *Config[*conn] {
	return &Config[*conn]{
		Name:   name,
		Closed: errClosed,
		Logger: slog.New(slog.DiscardHandler),
		Open: func(_ context.Context, c net.Conn) *conn {
			return c.(*conn)
		},
		Serve: func(c *conn) {
			defer c.Close()
			io.Copy(io.Discard, c)
		},
		Release: func(c *conn) {
			s.mu.Lock()
			s.released = append(s.released, c)
			s.mu.Unlock()
		},
	}
}

func (s *server) releasedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.released)
}

func newConn() *conn {
	a, b := net.Pipe()
	return &conn{Conn: a, peer: b}
}

// start serves a new fake listener with a new group for the test's
// server.
func start(t *testing.T) (*Group[*conn], *server, *fakeListener, <-chan error) {
	g, s, ln := new(Group[*conn]), new(server), newFakeListener()
	return g, s, ln, serving(t.Context(), g, ln, s.config("test"))
}

// serving starts g.Serve on ln in the background and returns its result.
func serving(ctx context.Context, g *Group[*conn], ln net.Listener, cfg *Config[*conn]) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(ctx, ln, cfg) }()
	return errc
}

// peerClosed reports whether the server side of c was closed, as its peer
// sees it.
func peerClosed(c *conn) bool {
	c.peer.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := c.peer.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

func TestServeBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, s, ln, errc := start(t)

		var gaps []time.Duration
		last := time.Now()
		for _, err := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS} {
			ln.accepts <- acceptResult{err: err}
			now := time.Now()
			gaps = append(gaps, now.Sub(last))
			last = now
		}
		c := newConn()
		ln.accepts <- acceptResult{c: c} // resets the backoff
		ln.accepts <- acceptResult{err: syscall.EMFILE}
		last = time.Now()
		ln.accepts <- acceptResult{err: syscall.EPERM} // not temporary
		gaps = append(gaps, time.Since(last))
		// The first error is retried at once; each next one after a pause
		// twice the last, from 5ms; the reset restarts at 5ms.
		assert.Equal(t, []time.Duration{0, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 5 * time.Millisecond}, gaps)

		err := <-errc
		require.ErrorIs(t, err, syscall.EPERM)
		assert.Equal(t, "test: accept: operation not permitted", err.Error())
		assert.True(t, ln.closed(), "Serve closes its listener")

		c.peer.Close() // the connection ends by itself
		require.NoError(t, g.Shutdown(t.Context(), nil))
		assert.Equal(t, 1, s.releasedCount())
	})
}

func TestServeCustomTemporary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[*conn]
		var s server
		cfg := s.config("test")
		cfg.Temporary = func(err error) bool { return errors.Is(err, syscall.EPERM) }
		ln := newFakeListener()
		errc := serving(t.Context(), &g, ln, cfg)
		ln.accepts <- acceptResult{err: syscall.EPERM}
		ln.accepts <- acceptResult{err: syscall.EMFILE}
		require.ErrorIs(t, <-errc, syscall.EMFILE)
	})
}

func TestShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, s, ln, errc := start(t)
		busy, idle := newConn(), newConn()
		ln.accepts <- acceptResult{c: busy}
		ln.accepts <- acceptResult{c: idle}
		synctest.Wait()

		var woken []*conn
		done := make(chan error, 1)
		go func() {
			// wake runs under the group's lock: record only, then close
			// the idle one as a server waiting for a request would.
			done <- g.Shutdown(t.Context(), func(c *conn) {
				woken = append(woken, c)
				if c == idle {
					c.Close()
				}
			})
		}()
		synctest.Wait()
		require.ErrorIs(t, <-errc, errClosed)
		assert.True(t, ln.closed())
		assert.True(t, g.Closing())
		assert.ElementsMatch(t, []*conn{busy, idle}, woken)
		assert.Equal(t, 1, s.releasedCount(), "the idle connection left")
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a connection still busy", err)
		default:
		}

		busy.peer.Close() // the busy connection finishes
		require.NoError(t, <-done)
		assert.Equal(t, 2, s.releasedCount())

		// A closed group refuses to serve.
		ln2 := newFakeListener()
		require.ErrorIs(t, g.Serve(t.Context(), ln2, s.config("test")), errClosed)
		assert.True(t, ln2.closed())
		require.NoError(t, g.Shutdown(t.Context(), nil), "Shutdown again")
	})
}

func TestShutdownForces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, s, ln, errc := start(t)
		c := newConn()
		ln.accepts <- acceptResult{c: c}
		synctest.Wait()

		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		require.ErrorIs(t, g.Shutdown(ctx, nil), context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start), "it waited for ctx")
		assert.True(t, peerClosed(c))
		assert.Equal(t, 1, s.releasedCount(), "Shutdown waits for Release")
		require.ErrorIs(t, <-errc, errClosed)
	})
}

func TestServeContextEnds(t *testing.T) {
	for _, own := range []bool{false, true} {
		name := map[bool]string{false: "all", true: "own"}[own]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var g Group[*conn]
				var s server
				ctx1, cancel1 := context.WithCancel(t.Context())
				ln1, ln2 := newFakeListener(), newFakeListener()
				cfg := s.config("test")
				cfg.OwnConns = own
				err1 := serving(ctx1, &g, ln1, cfg)
				err2 := serving(t.Context(), &g, ln2, cfg)
				c1, c2 := newConn(), newConn()
				ln1.accepts <- acceptResult{c: c1}
				ln2.accepts <- acceptResult{c: c2}
				synctest.Wait()

				cancel1()
				require.ErrorIs(t, <-err1, context.Canceled)
				synctest.Wait()
				assert.True(t, ln1.closed())
				assert.False(t, ln2.closed())
				assert.True(t, peerClosed(c1))
				assert.Equal(t, !own, peerClosed(c2), "the other Serve's connection")

				require.NoError(t, g.Shutdown(t.Context(), func(c *conn) { c.Close() }))
				require.ErrorIs(t, <-err2, errClosed)
				assert.Equal(t, 2, s.releasedCount())
			})
		})
	}
}

func TestServeRefusesWhileClosing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[*conn]
		var s server
		ln := newFakeListener()
		shut := make(chan error, 1)
		// The connection arrives just as Shutdown runs.
		ln.hook = func() {
			go func() { shut <- g.Shutdown(t.Context(), nil) }()
			synctest.Wait()
		}
		errc := serving(t.Context(), &g, ln, s.config("test"))
		c := newConn()
		ln.accepts <- acceptResult{c: c}
		require.ErrorIs(t, <-errc, errClosed)
		require.NoError(t, <-shut)
		assert.True(t, peerClosed(c), "a refused connection is closed")
		assert.Equal(t, 1, s.releasedCount(), "and released")
	})
}

func TestListen(t *testing.T) {
	ln, err := Listen(t.Context(), "test", "127.0.0.1:0")
	require.NoError(t, err)
	ln.Close()
	_, err = Listen(t.Context(), "test", "127.0.0.1:-1")
	require.Error(t, err)
	assert.Regexp(t, "^test: ", err.Error())
}

// parkConn is a connection that ServePark parks on its first call.
type parkConn struct {
	net.Conn
	served int
	resume func()
}

// TestServeParkKeepsParkedConnections: a connection ServePark parked stays
// in the group, without Release, until the server resumes it; Shutdown
// waits for it, and wake resumes it.
func TestServeParkKeepsParkedConnections(t *testing.T) {
	var g Group[*parkConn]
	ln := newFakeListener()
	parked := make(chan *parkConn, 1)
	released := make(chan *parkConn, 1)
	cfg := &Config[*parkConn]{Name: "test", Closed: errClosed}
	cfg.Open = func(_ context.Context, c net.Conn) *parkConn {
		pc := &parkConn{Conn: c}
		pc.resume = g.Resumer(cfg, pc)
		return pc
	}
	cfg.ServePark = func(pc *parkConn) bool {
		pc.served++
		if pc.served == 1 {
			parked <- pc
			return true
		}
		pc.Close()
		return false
	}
	cfg.Release = func(pc *parkConn) { released <- pc }
	done := make(chan error, 1)
	go func() { done <- g.Serve(context.Background(), ln, cfg) }()
	client, server := net.Pipe()
	defer client.Close()
	ln.accepts <- acceptResult{c: server}
	pc := <-parked
	require.Eventually(t, func() bool { return g.Len() == 1 }, 5*time.Second, time.Millisecond)
	n := 0
	g.Each(func(*parkConn) { n++ })
	assert.Equal(t, 1, n)
	select {
	case <-released:
		t.Fatal("a parked connection was released")
	default:
	}
	shut := make(chan error, 1)
	go func() {
		shut <- g.Shutdown(context.Background(), func(pc *parkConn) { go pc.resume() })
	}()
	assert.Same(t, pc, <-released)
	require.NoError(t, <-shut)
	assert.Equal(t, 2, pc.served)
	assert.Equal(t, 0, g.Len())
	assert.ErrorIs(t, <-done, errClosed)
}
