// Package httplb balances a Go service's outgoing HTTP requests over a
// balancer.Pool: [Transport] is an http.RoundTripper that picks a member
// per request with the pool's policy and key, sends the request there and
// reports the outcome, so an http.Client (or an httputil.ReverseProxy)
// gets lbkit's policies, health checking, retries and circuit breaking
// with one field:
//
//	tr, err := httplb.New(httplb.Config{Pool: pool, Key: balancer.MustParseKey("header:X-User")})
//	client := &http.Client{Transport: tr}
//	resp, err := client.Get("http://fleet/users/7") // scheme and host become the member's
//
// # One request
//
// RoundTrip derives the pick key (a key put on the request's context with
// [WithKey], else Config.Key from the request's header, cookie, path,
// query or client address), picks, rewrites a shallow copy of the request
// so its URL names the member (the Host header stays the request's),
// calls Endpoint.Start, and sends it with the member's own RoundTripper.
// The latency to the response headers feeds the member's peak-EWMA; the
// in-flight count and the circuit breakers' request slot are held until the
// response body is read to its end or closed. The outcome goes to
// Endpoint.Done, and through it to the health.Checker that follows the
// pool (passive health): a connection error, a broken-off body or a 5xx is
// a failure; a 4xx or a caller's cancellation is not.
//
// # Retries
//
// An idempotent request whose body is absent or replayable (GetBody, which
// http.NewRequest sets for in-memory bodies) is retried after a connection
// error or a 502, 503 or 504, on another member when there is one
// (Config.Retries times, 2 by default). Between attempts it waits a
// jittered exponential backoff (Envoy's: uniform in [0, base×2ⁿ⁻¹], capped);
// a retry whose backoff would pass the request context's deadline is not
// made. A request whose body was consumed and cannot be replayed is never
// sent twice.
//
// # Circuit breakers and the retry budget
//
// Config.Circuit sets Envoy's four thresholds for the pool and per member
// (package circuit). Requests beyond a threshold fail at once with an
// error that wraps circuit.ErrOpen and names the threshold. Each retry
// takes a retry slot; with a retry budget (Envoy's retry_budget) the
// retries in flight stay under a share of the requests in flight, so an
// outage where every attempt fails adds at most that share to the load.
// A retry refused by a threshold is counted as overflow, and the request
// returns its last outcome: the failing member's response, or its error
// joined with the breaker's (errors.Is finds both).
//
// # Connections
//
// Each member gets its own http.Transport (Config.NewTransport replaces
// it): idle connections are kept per member (up to
// DefaultMaxIdleConnsPerHost, not net/http's 2, so 200 concurrent callers
// do not churn connections), a member's connections are capped by
// Circuit.Member.MaxConnections with the excess waiting as pending
// requests, and a member that leaves the pool has its idle connections
// closed. A single shared http.Transport would pool per host just the
// same; see BenchmarkRoundTrip for the measured cost of either.
//
// # Reverse proxies
//
// Transport works as the Transport of httputil.ReverseProxy: the outgoing
// request's RemoteAddr is the client's, so Key "client" keeps a client on
// one member, and GETs that fail on a dead member are retried elsewhere.
package httplb
