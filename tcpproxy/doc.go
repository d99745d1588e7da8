// Package tcpproxy is lbkit's layer-4 (TCP) proxy: a [Server] accepts
// client connections, picks a backend for each from a [balancer.Pool],
// connects to it and copies bytes both ways until both sides are done.
//
// # One pool, one key
//
// The pool is the only list of backends: the server picks from its
// current snapshot for every new connection, so members added, removed,
// drained or marked unhealthy (by a health.Checker that follows the pool,
// or by hand) take effect for the next connection with no call to the
// server, and established connections are left alone. [Config.Key] says
// which key the pick uses: none (the pool's policy picks freely), the
// client's address under a prefix ("client", "client/24") so that a
// Maglev or ring-hash pool keeps a client on one backend, or the
// connection's 5-tuple ("flow"). The server never closes the pool.
//
// # Connections
//
// A dial that fails or a backend at [Config.MaxConnsPerBackend] is tried
// again on another backend, up to [Config.DialAttempts] distinct ones.
// Each connection is bracketed by Endpoint.Start and Endpoint.Done, which
// is all passive health needs: a failed connect is reported with its error
// (a checker following the pool counts it towards ejection); a connection
// that was established is a success with its connect time as latency, however
// it ends, as HAProxy judges layer-4 traffic. End of input on one
// side is passed on as a half-close, so request-then-reply protocols work;
// a connection on which neither side sent anything for
// [Config.IdleTimeout] is closed.
//
// # Engine
//
// On Linux, connections run on event loops, one per CPU, each an epoll
// set the Go runtime polls for it: given a *net.TCPListener, the loops
// accept (accept4), connect to backends without blocking and copy both
// ways, small reads through the loop's one buffer with read and write,
// streams with splice(2) through pipes from a shared free list. A
// connection holds no goroutine, and no buffer or pipe while idle; its
// system calls skip the runtime's bookkeeping, as none of them can block.
// Its sockets join the epoll set once, edge-triggered, and TCP_NODELAY is
// set only on a socket written to more than once (Nagle's algorithm
// never holds back a first write): a connection that carries one request
// and one reply costs about 16 system calls.
// Connections that need the net package (AcceptProxyProtocol, TLS,
// Routes) are dialed on a goroutine and then copied on the loops too
// unless TLS is terminated. Elsewhere, and for other listeners, each
// connection runs on goroutines, with splice between TCP sockets.
//
// # PROXY protocol
//
// With [Config.ProxyProtocol] the server sends a PROXY protocol header
// (package proxyproto, version 1 or 2) to each backend before any payload,
// naming the client. With [Config.AcceptProxyProtocol] it expects one from
// every client, for a server behind another proxy or load balancer: the
// header's addresses then stand for the client's, in the key and in the
// header sent on.
//
// # TLS
//
// [Config.Routes] sends TLS connections to other pools by the server name
// (SNI) of their ClientHello, without terminating: the proxy reads the
// hello with crypto/tls's own parser, picks the pool and forwards every
// byte untouched. [Config.TLS] terminates TLS instead, with certificates
// from files (reloaded by Update, picked by SNI), session tickets that
// survive Updates and ALPN; the server name and protocol agreed reach the
// backend in a PROXY v2 header.
//
// # Lifecycle and runtime change
//
// [New] validates a [Config]; nothing runs until [Server.Serve] (or
// [Server.ListenAndServe]). [Server.Shutdown] stops accepting and waits
// for connections to finish until its context ends, then closes the rest;
// [Server.Close], or the end of the context given to Serve, stops at once.
// Serve returns nil when stopped either way. [Server.Update] swaps the
// whole configuration atomically while serving: new connections use the
// new one, established ones keep theirs.
package tcpproxy
