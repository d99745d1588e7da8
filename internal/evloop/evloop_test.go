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

// TestArmReportsOncePerArm: an armed descriptor is reported when bytes
// arrive, once, and again only after it is armed again; a hang-up is
// reported too; a forgotten record is not.
func TestArmReportsOncePerArm(t *testing.T) {
	ready := make(chan *rec, 8)
	p, err := New(func(r *rec) { ready <- r })
	require.NoError(t, err)
	defer p.Close()
	s, c := pair(t)
	r := &rec{"a"}
	fd := fdOf(t, s)
	require.NoError(t, p.Arm(fd, r))
	select {
	case <-ready:
		t.Fatal("reported before any byte arrived")
	case <-time.After(20 * time.Millisecond):
	}
	c.Write([]byte("x"))
	assert.Same(t, r, <-ready)
	c.Write([]byte("y"))
	select {
	case <-ready:
		t.Fatal("reported twice for one Arm")
	case <-time.After(20 * time.Millisecond):
	}
	// Armed again with bytes waiting: reported at once.
	require.NoError(t, p.Arm(fd, r))
	assert.Same(t, r, <-ready)

	s2, c2 := pair(t)
	r2 := &rec{"b"}
	require.NoError(t, p.Arm(fdOf(t, s2), r2))
	c2.Close()
	assert.Same(t, r2, <-ready, "a hang-up is reported")

	s3, c3 := pair(t)
	r3 := &rec{"c"}
	require.NoError(t, p.Arm(fdOf(t, s3), r3))
	p.Forget(fdOf(t, s3), r3)
	c3.Write([]byte("z"))
	select {
	case got := <-ready:
		t.Fatalf("forgotten record %q reported", got.name)
	case <-time.After(20 * time.Millisecond):
	}
}

// TestArmOutOfRange: a descriptor beyond the table is refused.
func TestArmOutOfRange(t *testing.T) {
	p, err := New(func(*rec) {})
	require.NoError(t, err)
	defer p.Close()
	assert.ErrorIs(t, p.Arm(-1, &rec{}), ErrRange)
	assert.ErrorIs(t, p.Arm(chunkSize*maxChunks, &rec{}), ErrRange)
	require.NoError(t, p.Close())
}
