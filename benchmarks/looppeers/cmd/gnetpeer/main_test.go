package main

import (
	"net/netip"
	"testing"

	"github.com/lbkit/lbkit/benchmarks/looppeers"
	"github.com/lbkit/lbkit/benchmarks/looppeers/peertest"
)

// TestPeer: the peer answers as redirect.Server does, keeps a connection
// answered, and skips a body that arrives over two reads.
func TestPeer(t *testing.T) {
	peertest.Run(t, func(listen string, backends []netip.AddrPort, stop <-chan struct{}, ready chan<- struct{}) error {
		return serve(looppeers.Flags{Listen: listen, Backends: backends}, stop, ready)
	})
}
