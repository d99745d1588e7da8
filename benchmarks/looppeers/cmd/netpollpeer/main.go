// Command netpollpeer serves what redirect.Server serves in
// BenchmarkFrontEndRedirect (see package looppeers) on netpoll:
// netpoll.NewEventLoop with an OnRequest that answers the whole request
// heads in the connection's zero-copy input buffer (Peek, Skip, Release)
// and writes the answers through Writer.Malloc and Flush. netpoll runs
// OnRequest on its goroutine pool only while a connection has input; the
// start of a head that has not arrived whole is waited for there, as
// netpoll requires (OnRequest must consume all input). It runs until its
// standard input closes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cloudwego/netpoll"

	"github.com/lbkit/lbkit/benchmarks/looppeers"
)

// Timeouts, as redirect.Server's defaults.
const (
	readTimeout = 10 * time.Second
	idleTimeout = 2 * time.Minute
)

func main() {
	f, err := looppeers.ParseFlags(flag.CommandLine, os.Args[1:])
	if err == nil {
		err = serve(f, looppeers.StdinClosed(), nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpollpeer:", err)
		os.Exit(1)
	}
}

type server struct {
	r   *looppeers.Responder
	out looppeers.Buffers
}

// onRequest answers what c has buffered. When a head (or a body being
// skipped) is incomplete it waits for more, bounded by the read timeout.
func (s *server) onRequest(_ context.Context, c netpoll.Connection) error {
	r, w := c.Reader(), c.Writer()
	var cs looppeers.Conn
	buf := s.out.Get()
	defer s.out.Put(buf)
	for {
		in, err := r.Peek(r.Len())
		if err != nil {
			return c.Close()
		}
		out, n, closeConn := s.r.Serve(&cs, (*buf)[:0], in)
		*buf = out
		if len(out) > 0 {
			p, err := w.Malloc(len(out))
			if err != nil {
				return c.Close()
			}
			copy(p, out)
			if err := w.Flush(); err != nil {
				return c.Close()
			}
		}
		if closeConn {
			return c.Close()
		}
		r.Skip(n)
		if r.Len() == 0 && cs.Idle() {
			return r.Release()
		}
		// What is left is part of a head (or a body is being skipped):
		// unless more bytes came in meanwhile, wait for at least one.
		if rest := len(in) - n; r.Len() == rest {
			if _, err := r.Peek(rest + 1); err != nil {
				return c.Close()
			}
		}
	}
}

// serve answers on f.Listen until stop closes; it closes ready (when
// not nil) once it listens.
func serve(f looppeers.Flags, stop <-chan struct{}, ready chan<- struct{}) error {
	r, err := looppeers.NewResponder(f.Backends)
	if err != nil {
		return err
	}
	defer r.Close()
	ln, err := netpoll.CreateListener("tcp", f.Listen)
	if err != nil {
		return err
	}
	s := &server{r: r}
	loop, err := netpoll.NewEventLoop(s.onRequest,
		netpoll.WithReadTimeout(readTimeout),
		netpoll.WithIdleTimeout(idleTimeout))
	if err != nil {
		ln.Close()
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- loop.Serve(ln) }()
	if ready != nil {
		close(ready)
	}
	select {
	case err := <-errc:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return loop.Shutdown(ctx)
}
