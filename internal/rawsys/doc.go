// Package rawsys holds the system calls of lbkit's event loops (the HTTP
// proxy's and the TCP proxy's), made raw: on non-blocking sockets, pipes
// and epoll sets none of them can block, so they skip the runtime's
// syscall bookkeeping. Measured on the TCP proxy's work, that bookkeeping
// (a processor handed off when a loopback connect or close ran past the
// scheduler's 20 µs tick, and the threads woken to take it over) cost
// more than the calls themselves.
//
// Only Linux is supported; elsewhere the package is empty.
package rawsys
