package dnslb

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serving starts s on fresh loopback sockets with ctx and returns the
// address and the channel Serve's result arrives on.
func serving(t *testing.T, s *Server, ctx context.Context) (string, chan error) {
	t.Helper()
	udp, tcp, err := Listen(context.Background(), "127.0.0.1:0", 2)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, []net.Listener{tcp}) }()
	return tcp.Addr().String(), done
}

func newZoneServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Config{Zones: []Zone{{Origin: "example.test.", Records: testZone}}, Logger: quiet})
	require.NoError(t, err)
	return s
}

// busyConns counts the server's TCP connections in the middle of a query.
func busyConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		c.mu.Lock()
		if c.busy {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// partialQuery dials addr and sends a query's length prefix and the first
// half of it; the rest is returned for the caller to send.
func partialQuery(t *testing.T, addr string) (net.Conn, []byte) {
	t.Helper()
	pkt := packQuery(t, "example.test.", dns.TypeSOA)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(pkt)))
	msg = append(msg, pkt...)
	_, err = c.Write(msg[:len(msg)/2])
	require.NoError(t, err)
	return c, msg[len(msg)/2:]
}

// readAnswer reads one length-prefixed response from c.
func readAnswer(t *testing.T, c net.Conn) (*dns.Msg, error) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	var r dns.Msg
	require.NoError(t, r.Unpack(buf))
	return &r, nil
}

// TestShutdownFinishesTCPQueries: Shutdown lets a connection answer the
// query it is reading, closes an idle one, and returns nil once both are
// done; Serve returns nil.
func TestShutdownFinishesTCPQueries(t *testing.T) {
	s := newZoneServer(t)
	addr, done := serving(t, s, context.Background())

	idle, err := dns.Dial("tcp", addr)
	require.NoError(t, err)
	defer idle.Close()
	m := new(dns.Msg)
	m.SetQuestion("example.test.", dns.TypeSOA)
	require.NoError(t, idle.WriteMsg(m))
	_, err = idle.ReadMsg()
	require.NoError(t, err)
	// The idle connection is marked busy until just after its answer is
	// written: wait until it waits for its next query, so the busy one
	// counted below is the partial query's.
	require.Eventually(t, func() bool { return busyConns(s) == 0 }, 10*time.Second, time.Millisecond)

	busy, rest := partialQuery(t, addr)
	require.Eventually(t, func() bool { return busyConns(s) == 1 }, 10*time.Second, time.Millisecond)

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// The idle connection is closed at once ...
	require.NoError(t, idle.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = idle.ReadMsg()
	require.Error(t, err)
	assert.False(t, errors.Is(err, context.DeadlineExceeded))
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a query was in progress", err)
	default:
	}
	// ... the busy one gets its answer, then is closed.
	_, err = busy.Write(rest)
	require.NoError(t, err)
	r, err := readAnswer(t, busy)
	require.NoError(t, err)
	assert.Len(t, r.Answer, 1)
	_, err = readAnswer(t, busy)
	assert.ErrorIs(t, err, io.EOF)

	require.NoError(t, <-shut)
	require.NoError(t, <-done)
	assert.NoError(t, s.Shutdown(context.Background()), "idempotent")
	assert.NoError(t, s.Close())
}

// TestShutdownDeadlineCloses: when Shutdown's ctx ends before a query
// finishes, the connection is closed and Shutdown returns ctx.Err().
func TestShutdownDeadlineCloses(t *testing.T) {
	s := newZoneServer(t)
	addr, done := serving(t, s, context.Background())
	busy, _ := partialQuery(t, addr)
	require.Eventually(t, func() bool { return busyConns(s) == 1 }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, s.Shutdown(ctx), context.Canceled)
	_, err := readAnswer(t, busy)
	assert.ErrorIs(t, err, io.EOF)
	require.NoError(t, <-done)
}

// TestCancelMeansClose: cancelling Serve's ctx closes connections at once,
// a query in progress included, and Serve returns nil.
func TestCancelMeansClose(t *testing.T) {
	s := newZoneServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := serving(t, s, ctx)
	busy, _ := partialQuery(t, addr)
	require.Eventually(t, func() bool { return busyConns(s) == 1 }, 10*time.Second, time.Millisecond)
	cancel()
	_, err := readAnswer(t, busy)
	assert.ErrorIs(t, err, io.EOF)
	require.NoError(t, <-done)
	assert.ErrorIs(t, s.Serve(context.Background(), nil, nil), ErrServerClosed)
}

// TestStopBeforeServe: Close or Shutdown before Serve makes Serve fail
// with ErrServerClosed and close the sockets it was given.
func TestStopBeforeServe(t *testing.T) {
	for _, stop := range []func(*Server) error{
		func(s *Server) error { return s.Close() },
		func(s *Server) error { return s.Shutdown(context.Background()) },
	} {
		s := newZoneServer(t)
		require.NoError(t, stop(s))
		udp, tcp, err := Listen(context.Background(), "127.0.0.1:0", 1)
		require.NoError(t, err)
		assert.ErrorIs(t, s.Serve(context.Background(), udp, []net.Listener{tcp}), ErrServerClosed)
		_, err = tcp.Accept()
		assert.ErrorIs(t, err, net.ErrClosed)
	}
}
