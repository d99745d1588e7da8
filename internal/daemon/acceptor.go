package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// socket is a listening socket that outlives the servers given it, so
// that a reload can replace a listener's server without closing the
// socket: no connection is refused while one server hands over to the
// next, and the old one finishes its connections while the new one
// takes the next.
//
// On a TCP socket every server generation gets a *net.TCPListener of its
// own over a duplicate of the socket's descriptor, so the servers' paths
// for TCP listeners run (event loops accepting on the descriptor, idle
// connections parked on epoll). Closing a duplicate, as a server's
// Shutdown does, leaves the socket listening for the next generation: the
// socket's own descriptor, never served, keeps it open until close. For
// two generations at once (during a reload, until the old one's Shutdown
// closed its listener) each connection goes to one of them.
//
// A socket that is not TCP, or whose descriptor cannot be duplicated,
// falls back for good to an [acceptor], which accepts on the socket and
// hands each connection to the current generation's virtual listener.
//
// Its methods are safe for concurrent use.
type socket struct {
	ln  net.Listener
	log *slog.Logger

	mu  sync.Mutex
	acc *acceptor // nil while generations get duplicates
}

func newSocket(ln net.Listener, log *slog.Logger) *socket {
	return &socket{ln: ln, log: log}
}

// listener returns a listener for a new server generation, which the
// server closes (its Shutdown or Close, or the end of its Serve). It does
// not fail: when the descriptor cannot be duplicated, this generation and
// every later one are fed by an acceptor instead. Once the new server
// serves it, [socket.activate] makes it the one connections go to.
func (s *socket) listener() net.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acc != nil {
		return s.acc.newVirtual()
	}
	if tl, ok := s.ln.(*net.TCPListener); ok {
		ln, err := dupListener(tl)
		if err == nil {
			return ln
		}
		s.log.Warn("daemon: serving the socket through an acceptor", "err", err)
	}
	acc, v := newAcceptor(s.ln, s.log)
	s.acc = acc
	return v
}

// activate makes ln, from [socket.listener], the listener new
// connections go to. A duplicate takes connections as soon as its server
// accepts on it: there is nothing to do. The previous generation's
// listener is closed by its server's Shutdown.
func (s *socket) activate(ln net.Listener) {
	if v, ok := ln.(*vlistener); ok {
		v.a.switchTo(v)
	}
}

// close closes the socket's own descriptor (and stops its acceptor, if
// any). The port stops accepting once the servers closed their listeners
// too. It is idempotent.
func (s *socket) close() {
	s.mu.Lock()
	acc := s.acc
	s.mu.Unlock()
	if acc != nil {
		acc.close()
		return
	}
	s.ln.Close()
}

// dupListener returns a listener over a duplicate of tl's descriptor.
func dupListener(tl *net.TCPListener) (net.Listener, error) {
	f, err := tl.File()
	if err != nil {
		return nil, fmt.Errorf("daemon: duplicate listener: %w", err)
	}
	defer f.Close() // FileListener made its own duplicate
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("daemon: duplicate listener: %w", err)
	}
	return ln, nil
}

// acceptor is the fallback of a [socket] that cannot give each server
// generation a listener of its own. One goroutine accepts from the socket
// and hands each connection to the current generation through a virtual
// listener; a reload switches it to the new generation's.
type acceptor struct {
	ln   net.Listener
	log  *slog.Logger
	mu   sync.Mutex
	cur  *vlistener
	stop chan struct{} // closed by close
	once sync.Once
	done chan struct{} // closed when run returned
}

// newAcceptor starts accepting on ln for a first virtual listener, which
// it returns.
func newAcceptor(ln net.Listener, log *slog.Logger) (*acceptor, *vlistener) {
	a := &acceptor{ln: ln, log: log, stop: make(chan struct{}), done: make(chan struct{})}
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
			select {
			case <-time.After(delay):
			case <-a.stop:
				return
			}
			continue
		}
		delay = 0
		a.deliver(c)
	}
}

// deliver hands c to the current virtual listener; if that one closes
// before taking it (its server is being replaced), to its successor; with
// none left, or once the acceptor is closing, c is closed.
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
		case <-a.stop:
			c.Close()
			return
		}
	}
}

// close closes the socket and waits for the accept goroutine. The virtual
// listeners stay open until their servers close them. It is idempotent.
func (a *acceptor) close() {
	a.once.Do(func() { close(a.stop) })
	a.ln.Close()
	<-a.done
}

// vlistener is a server generation's view of an acceptor's socket.
// Closing it (as a server's Shutdown or Close does) stops that server's
// accepts and leaves the socket open for its successor.
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
	}
}

func (v *vlistener) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *vlistener) Addr() net.Addr { return v.a.ln.Addr() }
