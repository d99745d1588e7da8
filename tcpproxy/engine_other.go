//go:build !linux

package tcpproxy

import (
	"errors"
	"net"
	"time"
)

// engine has no event loops outside Linux: connections use pipe.
type engine struct{}

func (*engine) loop() (*loop, error) { return nil, errors.ErrUnsupported }
func (*engine) stop()                {}

type loop struct{}

func (*loop) add(*flow) error { return errors.ErrUnsupported }

type flow struct{ end func(error) }

func newFlow(client, backend *net.TCPConn, idle time.Duration, end func(error)) (*flow, error) {
	return nil, errors.ErrUnsupported
}

func (*flow) firstPump() error { return errors.ErrUnsupported }
func (*flow) release()         {}
func (*flow) shut()            {}

func (s *Server) fastListener(*net.TCPListener) net.Listener { return nil }
