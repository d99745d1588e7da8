// Package evloop parks idle connections on an epoll set, so that a
// connection waiting for its next request holds neither a goroutine nor
// a buffer: only its socket, a small record of the server's and a slot in
// the [Poller]'s table.
//
// A server serves a connection on a goroutine while bytes are in flight
// and, once a read would block, arms the socket in the poller
// ([Poller.Arm]) and lets the goroutine end. When the socket turns
// readable (or the peer hangs up), the poller calls the server's ready
// function with the connection's record, once per Arm (EPOLLONESHOT); the
// server starts a goroutine for it again. The poller's own epoll
// descriptor is watched by Go's network poller, so waiting costs no
// thread.
//
// A Poller exists on Linux only; elsewhere [New] fails and servers keep a
// goroutine per connection.
package evloop
