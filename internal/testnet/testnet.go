// Package testnet holds helpers for tests that run servers on loopback.
package testnet

import (
	"io"
	"net"
	"testing"
)

// FreeAddrs returns n distinct loopback addresses whose ports were free,
// for TCP and UDP alike, a moment ago: tests that must write an address
// into a configuration before the server binds it use them. The sockets
// are held until all n are found, so the addresses differ.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for len(addrs) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testnet: %v", err)
		}
		closers = append(closers, ln)
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil {
			continue // the UDP port is taken: try another
		}
		closers = append(closers, pc)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}
