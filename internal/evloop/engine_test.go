//go:build linux

package evloop

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echo is a test Handler: it writes back every line it reads, hands the
// connection over at a line "handoff", and closes after a line "bye".
type echo struct {
	lp      *Loop[int]
	expired chan int // the lines a connection had echoed when it expired
}

func (h *echo) Ready(c *Conn[int], _ bool) {
	for !c.Closed {
		if i := bytes.IndexByte(c.In[min(c.Off, len(c.In)):], '\n'); c.In != nil && i >= 0 {
			line := c.In[c.Off : c.Off+i+1]
			switch string(line) {
			case "handoff\n":
				h.lp.Handoff(c)
				return
			case "bye\n":
				c.W.Write(line)
				h.lp.CloseAfterOut(c)
				return
			}
			c.W.Write(line)
			c.Off += i + 1
			c.X++
			continue
		}
		if c.EOF {
			h.lp.Drop(c)
			return
		}
		if !h.lp.ReadIn(c, true) {
			return
		}
	}
}

func (h *echo) Event(any, uint32) {}
func (h *echo) Expire(c *Conn[int]) {
	h.expired <- c.X
	h.lp.Drop(c)
}
func (h *echo) Sweep(time.Time)        {}
func (h *echo) Idle(c *Conn[int]) bool { return c.Off == len(c.In) }
func (h *echo) Release(*Conn[int])     {}
func (h *echo) Close()                 {}

// echoEngine starts an engine with the echo handler on a loopback
// listener; it returns the engine, the wrapped listener and the channel
// of expirations.
func echoEngine(t *testing.T, idle time.Duration) (*Engine[int], net.Listener, chan int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e := new(Engine[int])
	expired := make(chan int, 16)
	el := e.Listener(ln.(*net.TCPListener), Config[int]{
		Name:        "test",
		NewHandler:  func(l *Loop[int]) Handler[int] { return &echo{lp: l, expired: expired} },
		InSize:      64,
		IdleTimeout: idle,
		Tick:        idle / 8,
	})
	require.NotNil(t, el)
	t.Cleanup(func() {
		el.Close()
		e.Kill()
		e.Stop()
	})
	return e, el, expired
}

func dialEcho(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func roundTrip(t *testing.T, c net.Conn, line string) {
	t.Helper()
	_, err := io.WriteString(c, line)
	require.NoError(t, err)
	got := make([]byte, len(line))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, line, string(got))
}

// TestEngineServesAndHandsOver: the loops serve connections through the
// handler, count them, and hand one over with the bytes read and not
// used, which the listener's Accept returns.
func TestEngineServesAndHandsOver(t *testing.T) {
	e, el, _ := echoEngine(t, time.Minute)
	a, b := dialEcho(t, el.Addr().String()), dialEcho(t, el.Addr().String())
	roundTrip(t, a, "one\n")
	roundTrip(t, b, "two\n")
	assert.EqualValues(t, 2, e.Conns())

	_, err := io.WriteString(a, "handoff\nrest")
	require.NoError(t, err)
	got, err := el.Accept()
	require.NoError(t, err)
	defer got.Close()
	pc, ok := got.(*PreConn)
	require.True(t, ok)
	assert.Equal(t, "handoff\n", string(pc.Pre[:8]), "the line it was handed over at, and what came with it")
	_, err = io.WriteString(a, "more")
	require.NoError(t, err)
	rest := make([]byte, 64)
	n, err := pc.Conn.Read(rest)
	require.NoError(t, err)
	assert.Equal(t, "handoff\nrestmore", string(pc.Pre)+string(rest[:n]), "the connection goes on where the loop left it")
	require.Eventually(t, func() bool { return e.Conns() == 1 }, 5*time.Second, time.Millisecond)

	roundTrip(t, b, "bye\n")
	_, err = b.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "closed after its output")
	require.Eventually(t, func() bool { return e.Conns() == 0 }, 5*time.Second, time.Millisecond)
}

// TestEngineExpires: a connection whose deadline passed goes to the
// handler's Expire.
func TestEngineExpires(t *testing.T) {
	e, el, expired := echoEngine(t, 200*time.Millisecond)
	c := dialEcho(t, el.Addr().String())
	roundTrip(t, c, "a\n")
	roundTrip(t, c, "b\n")
	assert.Equal(t, 2, <-expired, "expired after IdleTimeout, with its two lines")
	require.Eventually(t, func() bool { return e.Conns() == 0 }, 5*time.Second, time.Millisecond)
}

// TestEngineShutdown: Shutdown closes the idle connections at once and
// waits for the others until its context ends.
func TestEngineShutdown(t *testing.T) {
	e, el, _ := echoEngine(t, time.Minute)
	idle, busy := dialEcho(t, el.Addr().String()), dialEcho(t, el.Addr().String())
	roundTrip(t, idle, "x\n")
	roundTrip(t, busy, "y\n")
	_, err := io.WriteString(busy, "partial")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e.Conns() == 2 }, 5*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.True(t, e.Shutdown(ctx), "forced: a connection had a partial line")
	for _, c := range []net.Conn{idle, busy} {
		_, err := c.Read(make([]byte, 1))
		assert.Error(t, err)
	}
	assert.Zero(t, e.Conns())
}

// TestEngineListenerClosedByOwner: closing the listener the engine
// wrapped, rather than the wrapper, ends the wrapper's Accept.
func TestEngineListenerClosedByOwner(t *testing.T) {
	_, el, _ := echoEngine(t, 100*time.Millisecond)
	require.NoError(t, el.(*Listener[int]).TCPListener.Close())
	_, err := el.Accept()
	assert.ErrorIs(t, err, net.ErrClosed)
}

// TestEngineStopped: a stopped engine wraps no listener.
func TestEngineStopped(t *testing.T) {
	var e Engine[int]
	e.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	assert.Nil(t, e.Listener(ln.(*net.TCPListener), Config[int]{}))
}
