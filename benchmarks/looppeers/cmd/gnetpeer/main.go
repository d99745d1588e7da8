// Command gnetpeer serves what redirect.Server serves in
// BenchmarkFrontEndRedirect (see package looppeers) on gnet's event
// loops: gnet.Run with multicore (an event loop per CPU) and SO_REUSEPORT
// (a listener per loop, each accepting its own connections, as lbkit's
// loops do, rather than one reactor handing them out: about a quarter
// less CPU per request when every request opens a connection), answers
// rendered in OnTraffic from the bytes gnet holds (Peek, Discard) and
// written with Conn.Write on the loop. It runs until its standard input
// closes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/panjf2000/gnet/v2"

	"github.com/lbkit/lbkit/benchmarks/looppeers"
)

func main() {
	f, err := looppeers.ParseFlags(flag.CommandLine, os.Args[1:])
	if err == nil {
		err = serve(f, looppeers.StdinClosed(), nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gnetpeer:", err)
		os.Exit(1)
	}
}

// server is the gnet event handler.
type server struct {
	gnet.BuiltinEventEngine
	r      *looppeers.Responder
	out    looppeers.Buffers
	booted chan gnet.Engine
}

func (s *server) OnBoot(eng gnet.Engine) gnet.Action {
	s.booted <- eng
	return gnet.None
}

// OnTraffic answers the whole request heads gnet holds for c and leaves
// the start of the next one (if any) in gnet's buffer. A connection keeps
// a context only while it skips a request body.
func (s *server) OnTraffic(c gnet.Conn) gnet.Action {
	in, _ := c.Peek(-1)
	var cs looppeers.Conn // on the stack: no allocation per event
	p, _ := c.Context().(*looppeers.Conn)
	if p != nil {
		cs = *p
	}
	buf := s.out.Get()
	out, n, closeConn := s.r.Serve(&cs, *buf, in)
	if len(out) > 0 {
		c.Write(out) // on the loop: written now, or copied to c's outbound buffer
	}
	*buf = out
	s.out.Put(buf)
	if closeConn {
		return gnet.Close // gnet writes what is buffered before closing
	}
	c.Discard(n)
	switch {
	case !cs.Idle():
		if p == nil {
			p = new(looppeers.Conn)
			c.SetContext(p)
		}
		*p = cs
	case p != nil:
		c.SetContext(nil)
	}
	return gnet.None
}

// serve answers on f.Listen until stop closes; it closes ready (when
// not nil) once it listens.
func serve(f looppeers.Flags, stop <-chan struct{}, ready chan<- struct{}) error {
	r, err := looppeers.NewResponder(f.Backends)
	if err != nil {
		return err
	}
	defer r.Close()
	s := &server{r: r, booted: make(chan gnet.Engine, 1)}
	errc := make(chan error, 1)
	go func() { errc <- gnet.Run(s, "tcp://"+f.Listen, gnet.WithMulticore(true), gnet.WithReusePort(true)) }()
	var eng gnet.Engine
	select {
	case err := <-errc:
		return err
	case eng = <-s.booted:
	}
	if ready != nil {
		close(ready)
	}
	select {
	case err := <-errc:
		return err
	case <-stop:
	}
	if err := eng.Stop(context.Background()); err != nil {
		return err
	}
	return <-errc
}
