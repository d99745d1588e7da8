//go:build linux

package tcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/rawsys"
	"github.com/lbkit/lbkit/proxyproto"
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

// nonblockingPair returns a connected pair of non-blocking stream
// sockets, closed when the test ends.
func nonblockingPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

// drain reads what fd holds now.
func drain(t *testing.T, fd int) []byte {
	t.Helper()
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			return got
		}
		require.NoError(t, err)
		require.Positive(t, n, "unexpected EOF")
		got = append(got, buf[:n]...)
	}
}

// TestPumpResumesAfterFullDestination: with edge-triggered sockets a
// direction that stopped because its destination was full must, once
// the destination drains, go on reading its source without a new edge
// from it (the source's bytes arrived while it was blocked, and their
// edge was spent). Both modes: small reads kept in a buffer, and splice.
func TestPumpResumesAfterFullDestination(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprint("stream=", stream), func(t *testing.T) {
			client, backend := nonblockingPair(t), nonblockingPair(t)
			// The flow reads client[1] and writes backend[0]; the test
			// plays the client on client[0] and the backend on backend[1].
			f := &flow{fd: [2]int{client[1], backend[0]}}
			f.half[0].stream = stream
			f.half[0].nodelay = true // not TCP
			require.NoError(t, unix.SetsockoptInt(backend[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
			fill := bytes.Repeat([]byte{'-'}, 4096)
			for {
				if _, err := unix.Write(backend[0], fill); err == unix.EAGAIN {
					break
				} else {
					require.NoError(t, err)
				}
			}
			defer f.release()
			buf := make([]byte, bufSize)

			// First bytes: read, but the destination is full.
			_, err := unix.Write(client[0], []byte("first "))
			require.NoError(t, err)
			f.half[0].heard(unix.EPOLLIN)
			require.NoError(t, f.pump(0, 0, buf))
			require.True(t, f.half[0].pending(), "the destination took nothing")

			// More bytes arrive (an edge) while it is still full.
			_, err = unix.Write(client[0], []byte("second"))
			require.NoError(t, err)
			f.half[0].heard(unix.EPOLLIN)
			require.NoError(t, f.pump(0, 0, buf))

			// The backend drains; its writable edge is the only one.
			filled := drain(t, backend[1])
			require.NoError(t, f.pump(0, 0, buf))
			got := append(filled, drain(t, backend[1])...)
			assert.Equal(t, "first second", strings.TrimLeft(string(got), "-"))
			assert.False(t, f.half[0].ready, "the source was read until it had nothing more")
		})
	}
}

// TestNoDelayBeforeSecondWrite: a direct connection's sockets get
// TCP_NODELAY before the second write to them, when Nagle's algorithm
// could hold it back, and not before: one request and one reply need
// no setsockopt call.
func TestNoDelayBeforeSecondWrite(t *testing.T) {
	be := startBackend(t, echo)
	s, addr := startProxy(t, Config{Pool: newPool(t, nil, be.addr)})
	c := dial(t, addr)
	nodelay := func() [2]int {
		s.fmu.Lock()
		defer s.fmu.Unlock()
		require.Len(t, s.flows, 1)
		var got [2]int
		for f := range s.flows {
			f.mu.Lock()
			for i, fd := range f.fd {
				v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
				require.NoError(t, err)
				got[i] = v
			}
			f.mu.Unlock()
		}
		return got
	}
	ping(t, c)
	assert.Equal(t, [2]int{0, 0}, nodelay(), "one write each way")
	ping(t, c)
	assert.Equal(t, [2]int{1, 1}, nodelay(), "client and backend sockets before their second write")
}

// TestBlockedDestinationWatched: sockets are not registered for
// writable (a writable socket added for it is reported at once, a wasted
// wake), so one that could not take a write must be registered for it
// then: its writable edge is the only event that resumes the direction
// once the source has gone quiet.
func TestBlockedDestinationWatched(t *testing.T) {
	l, err := newLoop() // not run: the test polls and serves
	require.NoError(t, err)
	t.Cleanup(func() { l.close() })
	client, backend := nonblockingPair(t), nonblockingPair(t)
	require.NoError(t, unix.SetsockoptInt(backend[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	fill := bytes.Repeat([]byte{'-'}, 4096)
	for {
		if _, err := unix.Write(backend[0], fill); err == unix.EAGAIN {
			break
		} else {
			require.NoError(t, err)
		}
	}
	f := &flow{fd: [2]int{client[1], backend[0]}, end: func(error) {}}
	f.half[0].nodelay, f.half[1].nodelay = true, true // not TCP
	require.NoError(t, l.add(f))
	defer f.release()
	serve := func() {
		t.Helper()
		evs := make([]unix.EpollEvent, 8)
		n, err := rawsys.EpollPoll(l.epfd, evs)
		require.NoError(t, err)
		require.Positive(t, n, "an event is due")
		for _, ev := range evs[:n] {
			if f := l.flows[ev.Fd]; f != nil {
				l.serve(f, int(ev.Fd), ev.Events, 0)
			}
		}
	}

	_, err = unix.Write(client[0], []byte("quiet client"))
	require.NoError(t, err)
	serve() // read, not written: the destination is full
	require.True(t, f.half[0].pending())
	filled := drain(t, backend[1])
	serve() // the backend's writable edge
	got := append(filled, drain(t, backend[1])...)
	assert.Equal(t, "quiet client", strings.TrimLeft(string(got), "-"))
}

// TestNear: a loop keeps the connections it accepts while the loops are
// about even, and hands them to a loop with less than half its flows, so
// that two streams starting together do not share one CPU.
func TestNear(t *testing.T) {
	tests := []struct {
		accepting, other int32
		keep             bool
	}{
		{0, 0, true},
		{1, 0, false}, // the second of two streams
		{0, 1, true},
		{32, 30, true},
		{30, 14, false},
	}
	for _, tt := range tests {
		a, b := &loop{}, &loop{}
		a.n.Store(tt.accepting)
		b.n.Store(tt.other)
		e := &engine{started: true, loops: []*loop{a, b}}
		got, err := e.near(a)
		require.NoError(t, err)
		assert.Equal(t, tt.keep, got == a, "%d flows on the accepting loop, %d on the other", tt.accepting, tt.other)
	}
}

// TestProxyProtocolWildcardListener: on a listener bound to every
// address, the PROXY header names the address the client connected to,
// which only the connection's socket knows.
func TestProxyProtocolWildcardListener(t *testing.T) {
	got := make(chan proxyproto.Header, 1)
	b := headerBackend(t, got)
	p, err := New(Config{Pool: newPool(t, nil, b.addr), ProxyProtocol: proxyproto.V1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		assert.NoError(t, p.Close())
		assert.NoError(t, <-done)
	})
	addr := fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
	c := dial(t, addr)
	ping(t, c)
	h := <-got
	assert.Equal(t, addr, h.Destination.String(), "the address the client connected to")
	assert.Equal(t, c.LocalAddr().String(), h.Source.String())
}

// TestAcceptFailurePauses: after an accept error that will pass (out of
// descriptors), a loop stops watching the listener for the pause, then
// watches it again; the loop would otherwise spin on a listener that
// stays readable.
func TestAcceptFailurePauses(t *testing.T) {
	p, err := New(Config{Pool: newPool(t, nil), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fl, ok := p.fastListener(ln.(*net.TCPListener)).(*fastListener)
	require.True(t, ok, "the engine runs here")
	t.Cleanup(func() {
		fl.Close()
		p.Close()
	})
	lp := fl.loops[0]
	fl.failed(lp, unix.EMFILE)
	// Deleting an fd that is not in the set fails with ENOENT.
	assert.ErrorIs(t, rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, fl.fd, nil), unix.ENOENT, "out of the set during the pause")
	// Modifying an exclusive registration fails with EINVAL, a missing
	// one with ENOENT: a probe that changes nothing.
	assert.Eventually(t, func() bool {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fl.fd)}
		return rawsys.EpollCtl(lp.epfd, unix.EPOLL_CTL_MOD, fl.fd, &ev) == unix.EINVAL
	}, 5*time.Second, time.Millisecond, "back in the set after the pause")
}
