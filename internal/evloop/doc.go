// Package evloop serves connections on event loops ([Engine]) and parks
// idle connections of the goroutine paths on an epoll set ([Poller]).
//
// The Engine runs a few loops, one per CPU, that accept, read and write
// raw sockets and call a server's [Handler] when a client's socket is
// ready; what the handler cannot serve on a loop it hands over to the
// goroutine path (see engine.go).
//
// The Poller parks idle connections on an epoll set, so that a
// connection waiting for its next request holds neither a goroutine nor
// a buffer: only its socket, a small record of the server's and a slot in
// the [Poller]'s table.
//
// A server serves a connection on a goroutine while bytes are in flight
// and, once a read would block, marks the connection parked and lets the
// goroutine end; the first time, it adds the socket to the poller
// ([Poller.Add]), edge-triggered, for the rest of the connection's life,
// so parking again costs no system call. Whenever bytes arrive (or the
// peer hangs up), the poller calls the server's ready function with the
// connection's record; the server starts a goroutine for a parked one and
// ignores the others. The poller's own epoll descriptor is watched by
// Go's network poller, so waiting costs no thread.
//
// Parking without losing a wake-up takes three states: the owner marks
// the connection "parking", reads once without waiting, and moves it to
// "parked" only if no event came meanwhile (ready having turned
// "parking" into "pending"); otherwise it reads again.
//
// The Engine and the Poller exist on Linux only; elsewhere
// [Engine.Listener] returns nil, [New] fails and servers keep a
// goroutine per connection.
package evloop
