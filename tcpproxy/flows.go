package tcpproxy

import (
	"context"
	"errors"
	"net"
	"time"
)

// errAborted ends flows closed by Server.Close or a forced Shutdown.
var errAborted = errors.New("tcpproxy: connection closed by the server")

// handOff gives an established connection to the server's event loops,
// which copy both ways and call done when it ends. It reports false, with
// nothing changed, when the engine cannot take it (not Linux, or the
// descriptors could not be had): the caller copies with pipe instead.
func (s *Server) handOff(c *conn, client, backend *net.TCPConn, idle time.Duration, done func(error)) bool {
	l, err := s.eng.loop()
	if err != nil {
		return false
	}
	f, err := newFlow(client, backend, idle, nil)
	if err != nil {
		return false
	}
	f.end = func(err error) {
		c.closeConns()
		done(err)
		s.dropFlow(f)
	}
	if !s.addFlow(f) {
		f.end(errAborted)
		return true
	}
	// From here Close shuts the flow down rather than closing sockets
	// whose descriptors the flow uses.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		f.end(errAborted)
		return true
	}
	c.flow = f
	c.mu.Unlock()
	c.cancel() // dialing is over: the context need not be kept (nor its place in Serve's)
	// A client usually spoke first: pass that on before the loop waits.
	if err := f.firstPump(); err != nil {
		f.release()
		f.end(err)
		return true
	}
	if err := l.add(f); err != nil {
		f.release()
		f.end(err)
	}
	return true
}

// addFlow tracks f for Shutdown and Close, or reports false when the
// server stopped taking connections.
func (s *Server) addFlow(f *flow) bool {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.fclosed {
		return false
	}
	if s.flows == nil {
		s.flows = make(map[*flow]struct{})
	}
	s.flows[f] = struct{}{}
	return true
}

// dropFlow forgets a flow that ended.
func (s *Server) dropFlow(f *flow) {
	s.fmu.Lock()
	delete(s.flows, f)
	if len(s.flows) == 0 && s.fidle != nil {
		close(s.fidle)
		s.fidle = nil
	}
	s.fmu.Unlock()
}

// waitFlows waits for the event loops' connections to end by themselves
// until ctx ends, then shuts those left and waits for them; then it stops
// the loops. It returns ctx.Err() when it had to shut connections.
func (s *Server) waitFlows(ctx context.Context) error {
	var err error
	for {
		s.fmu.Lock()
		if len(s.flows) == 0 {
			s.fclosed = true
			s.fmu.Unlock()
			break
		}
		if s.fidle == nil {
			s.fidle = make(chan struct{})
		}
		idle := s.fidle
		if ctx.Err() != nil {
			err = ctx.Err()
			for f := range s.flows {
				f.shut()
			}
			s.fmu.Unlock()
			<-idle
			continue
		}
		s.fmu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
		}
	}
	s.eng.stop()
	return err
}
