package main

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/benchmarks/looppeers"
	"github.com/lbkit/lbkit/benchmarks/looppeers/peertest"
)

// start serves on a free loopback port until the test ends.
func start(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	stop, ready, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- serve(looppeers.Flags{Listen: addr, Backends: []netip.AddrPort{peertest.Backend}}, stop, ready)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(stop)
		require.NoError(t, <-done)
	})
	return addr
}

// TestSameAnswers: the peer answers as redirect.Server does.
func TestSameAnswers(t *testing.T) {
	peertest.Compare(t, start(t))
}

// TestKeepAlive: one connection's requests keep being answered, each
// after the last.
func TestKeepAlive(t *testing.T) {
	peertest.RoundTrips(t, start(t), 5000)
}

// TestSplitBody: a request body that arrives over two reads is skipped.
func TestSplitBody(t *testing.T) {
	peertest.SplitBody(t, start(t))
}
