//go:build !linux

package redirect

import (
	"context"
	"net"
)

// engine is the event engine's place in a Server; it runs on Linux only
// (see engine_linux.go).
type engine struct{}

func (e *engine) Shutdown(context.Context) bool { return false }
func (e *engine) Kill()                         {}
func (e *engine) Stop()                         {}

// engineListener returns nil: every connection takes a goroutine path.
func (s *Server) engineListener(*net.TCPListener) net.Listener { return nil }
