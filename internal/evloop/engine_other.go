//go:build !linux

package evloop

import (
	"context"
	"net"
	"net/netip"
)

// Engine is the event engine's place in a server; it runs on Linux
// only.
type Engine[X any] struct{}

// Listener returns nil: every connection takes the goroutine path.
func (e *Engine[X]) Listener(*net.TCPListener, Config[X]) net.Listener { return nil }

// Shutdown does nothing and reports false.
func (e *Engine[X]) Shutdown(context.Context) bool { return false }

// Kill does nothing.
func (e *Engine[X]) Kill() {}

// Stop does nothing.
func (e *Engine[X]) Stop() {}

// Conns returns 0.
func (e *Engine[X]) Conns() int64 { return 0 }

// Loop is an event loop; there are none on this system.
type Loop[X any] struct{}

// Conn is a client connection on a loop; there are none on this system.
type Conn[X any] struct {
	FD   int
	Peer netip.AddrPort
	X    X
}
