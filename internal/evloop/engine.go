package evloop

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// The Engine serves a server's connections on a few event loops, one per
// CPU, instead of a goroutine per connection: each loop waits in epoll
// for its sockets (raw descriptors: accept4 on the loops, no net.Conn),
// and calls its [Handler] when a client's socket is ready. Sockets are
// registered once, edge-triggered for reading and writing, and a
// [Conn] keeps what each event reported (CanRead, CanWrite, Hup), so a
// request costs no epoll_ctl and no read that finds nothing: a short
// read means the socket is empty until its next event.
//
// An idle connection holds no goroutine and no buffer: its state is a
// Conn in its loop. Its buffers (In, Out) are taken from pools while
// bytes are in flight. What a handler cannot serve on the loop it hands
// over ([Loop.Handoff]), with the bytes read so far, to the goroutine
// path, which takes it from the engine's listener's Accept as a
// [PreConn].
//
// The engine exists on Linux only; elsewhere [Engine.Listener] returns
// nil and servers keep a goroutine per connection.

// ErrClosed is why a stopped engine refuses a listener.
var ErrClosed = errors.New("evloop: engine stopped")

// Config configures an [Engine]'s loops; the first listener's is used.
type Config[X any] struct {
	// Name starts the listener's errors and log lines ("proxy").
	Name string
	// NewHandler makes each loop's handler, on the loop's start.
	NewHandler func(*Loop[X]) Handler[X]
	// InSize is the capacity of a connection's In buffer.
	InSize int
	// IdleTimeout is a new connection's deadline, and the bound on
	// writing what is left before a close (see [Loop.CloseAfterOut]).
	IdleTimeout time.Duration
	// Tick is how often each loop looks for expired deadlines, within
	// [5ms, 250ms].
	Tick time.Duration
	// Logger receives the listeners' warnings. Nil means slog.Default().
	Logger *slog.Logger
}

// Handler is what a server does on a loop: each loop has its own,
// called on the loop's goroutine only, so it needs no locking for its
// own state. Its methods must not block.
type Handler[X any] interface {
	// Ready is called when client connection c may be read (c.CanRead)
	// or was written to (wrote: c.Out was flushed whole; without wrote,
	// c.Out may still hold bytes). It is not called for a connection
	// closing after its output (Loop.CloseAfterOut).
	Ready(c *Conn[X], wrote bool)
	// Event is called with the events of a descriptor the handler
	// registered ([Loop.Register]) with v.
	Event(v any, events uint32)
	// Expire is called when c's Deadline passed.
	Expire(c *Conn[X])
	// Sweep is called after the loop expired its connections, every
	// Tick or so.
	Sweep(now time.Time)
	// Idle reports whether Shutdown may close c at once: it waits for
	// the client (for a request, say) with nothing left to write.
	Idle(c *Conn[X]) bool
	// Release ends what the handler holds for c, which is being closed
	// or handed over.
	Release(c *Conn[X])
	// Close is called when the server shuts down or the loop stops:
	// the handler closes what it keeps idle.
	Close()
}

// PreConn is a connection the engine handed over to the goroutine path,
// with the bytes it had read and not used.
type PreConn struct {
	net.Conn
	Pre []byte
}

// HeadEnd finds the end of the HTTP/1.1 request head at the start of b,
// as h1.ReadHead does: its length, or 0 when it is not all there, or a
// status to refuse it with (a bare LF, or no end within limit bytes).
func HeadEnd(b []byte, limit int) (n, status int) {
	for i, ch := range b {
		if ch != '\n' {
			continue
		}
		if i == 0 || b[i-1] != '\r' {
			return 0, http.StatusBadRequest // bare LF
		}
		if i >= 3 && b[i-2] == '\n' {
			return i + 1, 0
		}
	}
	if len(b) >= limit {
		for _, ch := range b[:limit] {
			if ch == '\n' {
				return 0, http.StatusRequestHeaderFieldsTooLarge
			}
		}
		return 0, http.StatusRequestURITooLong
	}
	return 0, 0
}
