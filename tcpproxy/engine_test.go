//go:build linux

package tcpproxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleHoldsNoGoroutine: on Linux an established connection belongs
// to an event loop, so an idle one holds no goroutine of the proxy (the
// goroutine-per-direction copy held two).
func TestIdleHoldsNoGoroutine(t *testing.T) {
	be := startBackend(t, echo)
	_, addr := startProxy(t, Config{Pool: newPool(t, nil, be.addr)})
	ping(t, dial(t, addr)) // starts the loops
	base := runtime.NumGoroutine()
	const n = 50
	for range n {
		ping(t, dial(t, addr))
	}
	// The backend runs one goroutine per connection; the proxy none.
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= base+n+5 }, wait, time.Millisecond,
		"goroutines: %d, base %d", runtime.NumGoroutine(), base)
}

// TestStreamsBothWays: megabytes each way, with a backend that reads
// nothing until it has sent all of its own and then reads in small
// bites, so the proxy meets full sockets (it keeps bytes and waits to
// write) in both modes (small reads, splice).
func TestStreamsBothWays(t *testing.T) {
	const size = 8 << 20
	up := make([]byte, size)
	for i := range up {
		up[i] = byte(rand.Uint32())
	}
	down := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	got := make(chan [32]byte, 1)
	be := startBackend(t, func(c net.Conn) {
		if _, err := c.Write(down); err != nil {
			return
		}
		h := sha256.New()
		buf := make([]byte, 1000)
		for {
			n, err := c.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- [32]byte(h.Sum(nil))
		c.(*net.TCPConn).CloseWrite()
	})
	_, addr := startProxy(t, Config{Pool: newPool(t, nil, be.addr)})
	c := dial(t, addr)
	// Small writes first: the small-read path, then a stream.
	for i := 0; i < 64; i++ {
		_, err := c.Write(up[i*100 : (i+1)*100])
		require.NoError(t, err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(up[6400:])
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	back, err := io.ReadAll(c)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	assert.Equal(t, len(down), len(back))
	assert.Equal(t, sha256.Sum256(down), sha256.Sum256(back), "backend to client intact")
	assert.Equal(t, sha256.Sum256(up), <-got, "client to backend intact")
}

// blackhole returns the address of a listener that never accepts and
// whose queue is full, so connecting to it hangs (SYNs are dropped).
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	for range 3 { // fill the accept queue; the last may hang
		if c, err := net.DialTimeout("tcp", addr.String(), 100*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return addr
}

// TestDialTimeout: a connect that hangs is given up after DialTimeout,
// reported to the backend's passive health, and the connection goes to
// another backend.
func TestDialTimeout(t *testing.T) {
	hole := blackhole(t)
	good := startBackend(t, named("good"))
	pool := newPool(t, nil, hole, good.addr)
	obs := &observer{}
	pool.SetObserver(obs)
	_, addr := startProxy(t, Config{Pool: pool, DialTimeout: 200 * time.Millisecond})
	for range 4 { // round robin: some start with the black hole
		c := dial(t, addr)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "good\n", line)
		c.Close()
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Positive(t, obs.failed[hole], "timed-out connects reach the observer")
	for _, err := range obs.errs {
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Contains(t, err.Error(), "tcpproxy: dial "+hole.String())
	}
}
