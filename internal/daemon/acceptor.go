package daemon

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// acceptor owns a listening socket across reloads. One goroutine accepts
// from it and hands each connection to the server in service, through a
// virtual listener; a reload that replaces the server switches the
// acceptor to the new server's virtual listener, then shuts the old one
// down: the socket is never closed, so no connection is refused, and the
// old server finishes its connections while the new one takes the next.
type acceptor struct {
	ln   net.Listener
	log  *slog.Logger
	mu   sync.Mutex
	cur  *vlistener
	done chan struct{}
}

// newAcceptor starts accepting on ln for a first virtual listener, which
// it returns.
func newAcceptor(ln net.Listener, log *slog.Logger) (*acceptor, *vlistener) {
	a := &acceptor{ln: ln, log: log, done: make(chan struct{})}
	v := a.newVirtual()
	a.cur = v
	go a.run()
	return a, v
}

// newVirtual returns a virtual listener that receives connections once
// switched to.
func (a *acceptor) newVirtual() *vlistener {
	return &vlistener{a: a, ch: make(chan net.Conn), closed: make(chan struct{})}
}

// switchTo makes v the listener new connections go to.
func (a *acceptor) switchTo(v *vlistener) {
	a.mu.Lock()
	a.cur = v
	a.mu.Unlock()
}

func (a *acceptor) current() *vlistener {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur
}

func (a *acceptor) run() {
	defer close(a.done)
	var delay time.Duration
	for {
		c, err := a.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http
			// does, and keep the socket.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			a.log.Warn("daemon: accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		a.deliver(c)
	}
}

// deliver hands c to the current virtual listener; if that one closes
// before taking it (its server is being replaced), to its successor; with
// none left, c is closed.
func (a *acceptor) deliver(c net.Conn) {
	for {
		v := a.current()
		select {
		case v.ch <- c:
			return
		case <-v.closed:
			if a.current() == v {
				c.Close()
				return
			}
		case <-a.done:
			c.Close()
			return
		}
	}
}

// close closes the socket and waits for the accept goroutine.
func (a *acceptor) close() {
	a.ln.Close()
	<-a.done
}

// vlistener is a server's view of an acceptor's socket. Closing it (as a
// server's Shutdown or Close does) stops that server's accepts and leaves
// the socket open for its successor.
type vlistener struct {
	a      *acceptor
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (v *vlistener) Accept() (net.Conn, error) {
	select {
	case c := <-v.ch:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.a.done:
		return nil, net.ErrClosed
	}
}

func (v *vlistener) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *vlistener) Addr() net.Addr { return v.a.ln.Addr() }
