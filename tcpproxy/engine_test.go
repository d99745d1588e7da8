package tcpproxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleHoldsNoGoroutine: on Linux an established connection belongs
// to an event loop, so an idle one holds no goroutine of the proxy (the
// goroutine-per-direction copy held two).
func TestIdleHoldsNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loops run on Linux only")
	}
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
