// Package proxy is lbkit's HTTP reverse proxy: [HTTP], an http.Handler
// that forwards requests to backends picked from a balancer.Pool, and
// [Server], a purpose-built HTTP/1.1 front-end for it. The layer-4 proxy
// is package tcpproxy.
//
// # One pool, one key
//
// The pool given in HTTPConfig.Pool is the only list of backends: members
// added, removed, drained or re-weighted there are used from the next
// request, and keep-alive client connections carry on. HTTPConfig.Key (a
// balancer.Key: the client address, a header, a cookie, the path or a
// query parameter) derives the pick key of every attempt, so a hash policy
// in the pool (ring hash, Maglev, rendezvous) keeps a client or an object
// on one backend, and moves only the keys of a backend that leaves. The
// proxy never closes the pool.
//
// # Two front-ends, one forwarding core
//
// [HTTP.ServeHTTP] runs under net/http (an http.Server with a
// ReadHeaderTimeout and MaxHeaderBytes, and http.Protocols for HTTP/2 and
// h2c) and so gets TLS, HTTP/2 and any middleware. [Server] serves plain
// HTTP/1.1 clients itself: a goroutine per connection only while a
// request is in flight (idle connections are parked on an epoll set on
// Linux) and none per request, the strict request parser it shares with redirect.Server, which
// refuses ambiguous framing (Content-Length with Transfer-Encoding,
// differing lengths, obs-fold, bare LF) and request-targets that do not
// parse with 400 before anything reaches a backend, keep-alive and
// pipelining, a bound on the time between request-body bytes
// (ServerConfig.BodyIdleTimeout), and the backend's response head written
// from its bytes straight into the connection's buffer; once warm it
// allocates nothing per request, a key included. Both call the same
// internal forwarding function, so picking, retries, limits, health,
// sticky cookies, hooks and header rules are identical. Server has the
// lifecycle of every lbkit server: [NewServer], [Server.Serve] (which
// returns nil once stopped), [Server.Shutdown] to drain, [Server.Close]
// to stop now; the end of Serve's context means Close.
//
// # Hooks
//
// HTTPConfig.OnAttempt learns the backend, status, bytes, duration, try
// and error of every attempt (an access log naming the backend);
// HTTPConfig.RewriteRequest may change the upstream Host and fields per
// attempt (say from the member's metadata); HTTPConfig.ModifyResponse may
// change the status and fields going to the client. Unset, they cost
// nothing.
//
// # HTTP forwarding path
//
// [HTTP] does not use net/http's Transport. Its own HTTP/1.1 client keeps
// a LIFO stack of persistent connections per backend, each with a
// bufio.Reader and bufio.Writer taken from sync.Pools; it writes the
// request line and header fields straight from the request's header map
// (skipping hop-by-hop ones), parses the response status line and header
// fields itself, strictly (CRLF only, no obs-fold, token names, no control
// bytes in values, a single consistent Content-Length, "chunked" as the
// only Transfer-Encoding and never together with Content-Length, a size
// cap), and streams bodies through pooled 32 KiB buffers. A request costs
// no goroutine beyond the one net/http's server runs the handler on; only
// protocol upgrades (WebSocket) take a second one to copy both ways.
// HTTPConfig.TLS switches the backends to HTTPS on the same client;
// HTTPConfig.H2C switches them to HTTP/2 with prior knowledge, through
// net/http's Transport (multiplexed: one connection per backend).
//
// # Retries
//
// An attempt that fails to connect is retried on another backend: nothing
// was sent. An idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE
// or one with an Idempotency-Key header) is also retried after a
// connection error, a reset or a response status listed in
// HTTPConfig.RetryStatuses, as long as its body can be replayed: it had
// none, or it fitted in HTTPConfig.RetryBufferBytes and was buffered. A
// body read from the client and not buffered is never sent twice. Tries
// are bounded by HTTPConfig.MaxTries and HTTPConfig.RetryTimeout, and by
// the retry budget and circuit breakers of HTTPConfig.Circuit.
//
// # Connection limits and the queue
//
// HTTPConfig.MaxConns caps the requests in flight per backend, as
// HAProxy's maxconn does. A request first tries the backend the policy
// picks; when it is full, it asks the policy again (up to twice the ready
// count) for a backend with a free slot. When all are full it waits in one
// FIFO queue shared by the whole pool (HAProxy's backend queue), bounded by
// HTTPConfig.MaxQueue and HTTPConfig.QueueTimeout: the first slot freed on
// any ready backend goes to the oldest waiter that may use it, so a
// waiting request is not stuck behind one slow backend. Requests holding
// a sticky cookie wait only for their backend. Waiting costs no goroutine
// and no allocation beyond a timer; a full queue or a timeout answers 503.
//
// # Health, drain and shutdown
//
// Every attempt is bracketed by Endpoint.Start and Endpoint.Done with the
// latency to the response header (feeding the peak-EWMA); Done passes the
// outcome on to the pool's observer, the health.Checker that follows the
// pool (Checker.Follow), for passive health: connect errors, timeouts,
// protocol errors and 5xx are failures, a keep-alive connection the
// backend closed is not. A backend that leaves the ready set (unhealthy or
// draining) gets no new request and its idle connections are closed;
// requests in flight on it finish, and their connections are closed
// afterwards rather than kept. A backend removed from the pool is treated
// the same way. [Server.Shutdown] (or http.Server.Shutdown) lets requests
// in flight finish; then [HTTP.Close] closes the idle connections.
//
// # Headers
//
// X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded (RFC
// 7239) are replaced for clients outside HTTPConfig.TrustedProxies and
// extended for those inside. Hop-by-hop headers (Connection, Keep-Alive,
// Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade and those named
// in Connection) are not forwarded either way. Under net/http, the
// request-side smuggling defences are net/http's: it refuses differing
// Content-Lengths and unknown transfer codings, lets chunked win over
// Content-Length (RFC 9112 6.3), and unfolds obs-fold rather than refusing
// it; [Server] refuses all of them.
//
// # Errors
//
// 400: a request the proxy will not forward. 502: the backend failed
// (refused, reset, protocol error, [ErrUpstreamProtocol]). 503: no backend
// ready, [ErrQueueFull], [ErrQueueTimeout]. 504: dial, response header or
// request timeout.
package proxy
