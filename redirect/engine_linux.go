//go:build linux

package redirect

import (
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/evloop"
	"github.com/lbkit/lbkit/internal/h1"
	"github.com/lbkit/lbkit/internal/rawsys"
)

// The event engine (internal/evloop) answers a [Server]'s connections on
// TCP listeners on a few event loops, one per CPU, instead of a
// goroutine per busy connection: a loop reads what a client sent into a
// pooled buffer, parses every whole request head there, renders the
// handler's answers (which never block) into the loop's buffer and
// writes them straight to the socket, keeping in a pooled buffer only
// what the client does not take. An idle connection holds no goroutine
// and no buffer: its state is an rconn in its loop.
//
// The loops answer every request the goroutine path answers, with the
// same bytes: keep-alive, pipelining, bodies of known length up to
// maxSkipBody skipped, others answered with "Connection: close" and a
// lingering close, and the same refusals. No connection is handed over.

// Client connection states (rconn.State).
const (
	stIdle   = iota // waiting for a request
	stHead          // part of a request head arrived
	stBody          // skipping a request body
	stLinger        // answered and closing: reading what the client still sends
)

// rconn is a client connection on a loop.
type rconn = evloop.Conn[rpart]

// rpart is the redirect server's part of a client connection on a loop.
type rpart struct {
	left   int64 // body bytes to skip (stBody), or to read before closing (stLinger)
	readDL int64 // the request's deadline (ReadTimeout from its arrival), unix nanoseconds
	shut   bool  // stLinger: the write side is shut down
}

// engine is a server's set of loops.
type engine = evloop.Engine[rpart]

// engineListener returns ln wrapped for the engine, or nil.
func (s *Server) engineListener(ln *net.TCPListener) net.Listener {
	if s.noEngine {
		return nil
	}
	return s.eng.Listener(ln, evloop.Config[rpart]{
		Name:        "redirect",
		NewHandler:  s.newEloop,
		InSize:      s.cfg.MaxHeaderBytes,
		IdleTimeout: s.cfg.IdleTimeout,
		Tick:        s.tick(),
		Logger:      s.cfg.Logger,
	})
}

// tick is how often the loops look for expired deadlines: an eighth of
// the shortest timeout.
func (s *Server) tick() time.Duration {
	t := min(s.cfg.ReadTimeout, s.cfg.IdleTimeout, h1.LingerTimeout)
	if b := s.cfg.BodyIdleTimeout; b > 0 {
		t = min(t, b)
	}
	return t / 8
}

// eloop is the redirect server's part of one event loop: its
// evloop.Handler. Its srvConn parses one request at a time and renders
// the answers into its out buffer.
type eloop struct {
	lp *evloop.Loop[rpart]
	s  *Server
	sc *srvConn
}

func (s *Server) newEloop(lp *evloop.Loop[rpart]) evloop.Handler[rpart] {
	return &eloop{lp: lp, s: s, sc: &srvConn{s: s, out: make([]byte, 0, maxPendingOut+1024)}}
}

// closing reports whether the server is shutting down.
func (l *eloop) closing() bool { return l.lp.Closing() || l.s.g.Closing() }

// Ready answers what c sent (evloop.Handler).
func (l *eloop) Ready(c *rconn, wrote bool) {
	sc := l.sc
	sc.out = sc.out[:0]
	sc.peer = c.Peer.Addr().Unmap()
	sc.now = time.Now()
	l.serve(c)
	if len(sc.out) > 0 && !c.Closed {
		c.W.Write(sc.out) // a failure is in c.WErr
		sc.out = sc.out[:0]
	}
	if c.Closed {
		return
	}
	switch {
	case c.WErr != nil:
		l.lp.Drop(c)
	case c.State == stLinger:
		l.linger(c)
	}
}

// serve parses and answers the requests c holds, reading more while it
// can, until it must wait (or closes c). Answers go into l.sc.out.
func (l *eloop) serve(c *rconn) {
	s, sc := l.s, l.sc
	for !c.Closed && len(c.Out) == 0 && c.WErr == nil && c.State != stLinger {
		if len(sc.out) >= maxPendingOut {
			// A client pipelining without reading: push answers out
			// rather than buffer them without bound.
			c.W.Write(sc.out)
			sc.out = sc.out[:0]
			continue
		}
		if c.State == stBody {
			if !l.skip(c) {
				return
			}
			continue
		}
		var buf []byte
		if c.In != nil {
			buf = c.In[c.Off:]
		}
		if len(buf) == 0 && l.closing() {
			l.close(c)
			return
		}
		n, code := evloop.HeadEnd(buf, s.cfg.MaxHeaderBytes)
		if code == 0 && n > 0 {
			code = sc.head.Parse(buf[:n])
		}
		if code != 0 {
			if !l.closing() {
				sc.writeError(code)
			}
			l.close(c)
			return
		}
		if n == 0 {
			if c.EOF {
				l.close(c)
				return
			}
			if len(buf) > 0 && c.State == stIdle {
				c.State = stHead
				c.X.readDL = sc.now.Add(s.cfg.ReadTimeout).UnixNano()
				c.Deadline = c.X.readDL
			}
			if !l.lp.ReadIn(c, true) {
				return
			}
			continue
		}
		if c.State == stIdle {
			c.X.readDL = sc.now.Add(s.cfg.ReadTimeout).UnixNano()
		}
		req := sc.request(n)
		keep := req.keepAlive && req.bodyLen >= 0 && req.bodyLen <= maxSkipBody && !l.closing()
		keep = sc.answer(req, keep) // the request's strings die here
		c.Off += n
		switch {
		case !keep && req.bodyLen != 0:
			c.State, c.X.left, c.X.shut = stLinger, h1.LingerBytes, false
			c.Deadline = sc.now.Add(s.cfg.IdleTimeout).UnixNano() // for the answer to be taken
			return
		case !keep:
			l.close(c)
			return
		case req.bodyLen > 0:
			c.State, c.X.left = stBody, req.bodyLen
			c.Deadline = l.bodyDeadline(c)
		default:
			l.idle(c)
		}
	}
}

// idle makes c wait for its next request.
func (l *eloop) idle(c *rconn) {
	c.State = stIdle
	if c.Off == len(c.In) {
		l.lp.PutIn(c)
	}
	if c.Off < len(c.In) {
		// Part of the next request is there: its ReadTimeout runs.
		c.State = stHead
		c.X.readDL = l.sc.now.Add(l.s.cfg.ReadTimeout).UnixNano()
		c.Deadline = c.X.readDL
		return
	}
	c.Deadline = l.sc.now.Add(l.s.cfg.IdleTimeout).UnixNano()
}

// bodyDeadline is the deadline of the wait for more of a body:
// BodyIdleTimeout from now, within the request's ReadTimeout.
func (l *eloop) bodyDeadline(c *rconn) int64 {
	if b := l.s.cfg.BodyIdleTimeout; b > 0 {
		return min(l.sc.now.Add(b).UnixNano(), c.X.readDL)
	}
	return c.X.readDL
}

// skip discards body bytes; it reports whether to go on serving.
func (l *eloop) skip(c *rconn) bool {
	if c.In != nil {
		k := min(int64(len(c.In)-c.Off), c.X.left)
		c.Off += int(k)
		c.X.left -= k
	}
	if c.X.left == 0 {
		l.idle(c)
		return true
	}
	if c.EOF {
		l.close(c)
		return false
	}
	c.In, c.Off = c.In[:0], 0
	if !l.lp.ReadIn(c, false) {
		return false
	}
	c.Deadline = l.bodyDeadline(c)
	return true
}

// close closes c once its answers are written.
func (l *eloop) close(c *rconn) {
	sc := l.sc
	if len(sc.out) > 0 {
		c.W.Write(sc.out)
		sc.out = sc.out[:0]
	}
	l.lp.CloseAfterOut(c)
}

// linger closes a connection whose client may still send a body, as
// h1.LingerClose does: once the answers are out, it shuts the write side
// down and reads what comes until EOF, LingerBytes or LingerTimeout, so
// that the client gets the answer rather than a reset.
func (l *eloop) linger(c *rconn) {
	if len(c.Out) > 0 {
		return // the client's turn: its EPOLLOUT resumes
	}
	if !c.X.shut {
		c.X.shut = true
		rawsys.Shutdown(c.FD, unix.SHUT_WR)
		c.Deadline = time.Now().Add(h1.LingerTimeout).UnixNano()
	}
	for !c.Closed {
		if c.In != nil {
			c.X.left -= int64(len(c.In) - c.Off)
			c.In, c.Off = c.In[:0], 0
		}
		if c.EOF || c.X.left <= 0 {
			l.lp.Drop(c)
			return
		}
		if !l.lp.ReadIn(c, false) {
			return
		}
	}
}

// Event is not called: the redirect server registers no descriptor of
// its own (evloop.Handler).
func (l *eloop) Event(any, uint32) {}

// Expire closes c, whose deadline passed (evloop.Handler).
func (l *eloop) Expire(c *rconn) { l.lp.Drop(c) }

// Sweep does nothing: the loop's connections are all the handler has
// (evloop.Handler).
func (l *eloop) Sweep(time.Time) {}

// Idle reports whether c waits for the client with nothing left to
// write: for a request, the rest of its head, or a body it skips after
// answering. Shutdown closes it, as the goroutine path's Shutdown ends
// its reads (evloop.Handler).
func (l *eloop) Idle(c *rconn) bool {
	return c.State != stLinger && len(c.Out) == 0
}

// Release does nothing: no request outlives an event (evloop.Handler).
func (l *eloop) Release(*rconn) {}

// Close does nothing: the handler keeps nothing idle (evloop.Handler).
func (l *eloop) Close() {}
