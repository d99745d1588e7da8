package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startTestBackend serves model m on a fresh loopback port until the test
// ends.
func startTestBackend(t *testing.T, m capacity) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b, err := newBackend(ln, netip.MustParseAddrPort(ln.Addr().String()), 0, m)
	require.NoError(t, err)
	t.Cleanup(b.kill)
	return b
}

// TestBackendWorkersAndBacklog holds the capacity model to the kernel's
// behaviour: while the only worker is busy, connections wait in the
// accept queue (their handshakes complete, nobody serves them), and once
// the queue holds its backlog the kernel drops further SYNs, so a dial
// does not complete.
func TestBackendWorkersAndBacklog(t *testing.T) {
	const backlog = 2
	b := startTestBackend(t, capacity{name: "test", workers: 1, service: time.Hour, backlog: backlog})

	busy, err := net.Dial("tcp", b.addr.String())
	require.NoError(t, err)
	defer busy.Close()
	_, err = busy.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return b.count.Load() == 1 }, 10*time.Second, time.Millisecond,
		"the worker never took the first request")

	// The accept queue holds backlog connections (Linux: backlog + 1);
	// a SYN beyond that is dropped and retransmitted only after 1 s.
	queued := 0
	var dropped error
	for range backlog + 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", b.addr.String())
		cancel()
		if err != nil {
			dropped = err
			break
		}
		defer c.Close()
		queued++
	}
	require.Error(t, dropped, "the kernel accepted %d connections past a backlog of %d", queued, backlog)
	assert.True(t, errors.Is(dropped, context.DeadlineExceeded) || os.IsTimeout(dropped), "%v", dropped)
	assert.GreaterOrEqual(t, queued, backlog)
	assert.LessOrEqual(t, queued, backlog+1)
	assert.EqualValues(t, 1, b.count.Load(), "a queued connection was served while the worker was busy")
}

// TestBackendConnectionReuse: sync workers close the connection after
// each response (one request per connection, like gunicorn's sync
// workers and the write-up's ab), cheap workers keep it alive.
func TestBackendConnectionReuse(t *testing.T) {
	for _, tc := range []struct {
		preset    string
		keepAlive bool
	}{
		{"devserver", false}, {"uwsgi", false}, {"gunicorn", false}, {"gevent", true},
	} {
		t.Run(tc.preset, func(t *testing.T) {
			m, err := preset(tc.preset)
			require.NoError(t, err)
			m.service = time.Microsecond
			b := startTestBackend(t, m)
			c, err := net.Dial("tcp", b.addr.String())
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, !tc.keepAlive, resp.Close)
		})
	}
}

// TestServiceTimeMean: service times are log-normal around the configured
// mean (20,000 draws at σ 0.5 put the sample mean within 0.4 % of it one
// time in three; the bound is 12 times that).
func TestServiceTimeMean(t *testing.T) {
	m := capacity{service: 10 * time.Millisecond, sigma: 0.5}
	var sum time.Duration
	const n = 20000
	lo, hi := time.Hour, time.Duration(0)
	for range n {
		d := m.serviceTime()
		sum += d
		lo, hi = min(lo, d), max(hi, d)
	}
	assert.InEpsilon(t, float64(m.service), float64(sum/n), 0.05)
	assert.Less(t, lo, 5*time.Millisecond, "no spread below the mean")
	assert.Greater(t, hi, 20*time.Millisecond, "no spread above the mean")
	assert.Equal(t, time.Duration(0), capacity{}.serviceTime())
}

func TestBacklogNote(t *testing.T) {
	maxq := somaxconn()
	if maxq == 0 {
		t.Skip("no /proc/sys/net/core/somaxconn here")
	}
	assert.Contains(t, capacity{backlog: 10}.backlogNote(), "allows it")
	assert.Contains(t, capacity{backlog: maxq + 1}.backlogNote(), "caps it at")
}
