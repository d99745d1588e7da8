//go:build linux

package evloop

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type rec struct{ name string }

func fdOf(t *testing.T, c net.Conn) int {
	rc, err := c.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	fd := -1
	require.NoError(t, rc.Control(func(u uintptr) { fd = int(u) }))
	return fd
}

func pair(t *testing.T) (server, client net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func noReport(t *testing.T, ready chan *rec, why string) {
	t.Helper()
	select {
	case got := <-ready:
		t.Fatalf("%s: %q reported", why, got.name)
	case <-time.After(20 * time.Millisecond):
	}
}

// TestAddReportsArrivals: an added descriptor is reported whenever bytes
// arrive (at once if they wait already) and when the peer hangs up; a
// forgotten or removed one is not.
func TestAddReportsArrivals(t *testing.T) {
	ready := make(chan *rec, 8)
	p, err := New(func(r *rec) { ready <- r })
	require.NoError(t, err)
	defer p.Close()
	s, c := pair(t)
	r := &rec{"a"}
	require.NoError(t, p.Add(fdOf(t, s), r))
	noReport(t, ready, "before any byte arrived")
	c.Write([]byte("x"))
	assert.Same(t, r, <-ready)
	c.Write([]byte("y"))
	assert.Same(t, r, <-ready, "every arrival is reported")

	s2, c2 := pair(t)
	c2.Write([]byte("waiting"))
	r2 := &rec{"b"}
	require.Eventually(t, func() bool {
		n, _ := s2.(*net.TCPConn).SyscallConn()
		var avail bool
		n.Read(func(fd uintptr) bool {
			b := make([]byte, 1)
			k, _, _ := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			avail = k > 0
			return true
		})
		return avail
	}, time.Second, time.Millisecond)
	require.NoError(t, p.Add(fdOf(t, s2), r2))
	assert.Same(t, r2, <-ready, "bytes waiting when added")
	c2.Close()
	assert.Same(t, r2, <-ready, "a hang-up is reported")

	s3, c3 := pair(t)
	r3 := &rec{"c"}
	require.NoError(t, p.Add(fdOf(t, s3), r3))
	p.Forget(fdOf(t, s3), r3)
	c3.Write([]byte("z"))
	noReport(t, ready, "forgotten")

	s4, c4 := pair(t)
	r4 := &rec{"d"}
	require.NoError(t, p.Add(fdOf(t, s4), r4))
	p.Remove(fdOf(t, s4), r4)
	c4.Write([]byte("z"))
	noReport(t, ready, "removed")
}

// TestAddOutOfRange: a descriptor beyond the table is refused.
func TestAddOutOfRange(t *testing.T) {
	p, err := New(func(*rec) {})
	require.NoError(t, err)
	defer p.Close()
	assert.ErrorIs(t, p.Add(-1, &rec{}), ErrRange)
	assert.ErrorIs(t, p.Add(chunkSize*maxChunks, &rec{}), ErrRange)
	require.NoError(t, p.Close())
}
