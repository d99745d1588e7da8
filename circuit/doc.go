// Package circuit implements Envoy's circuit breakers and retry budget for
// lbkit's client-side front-ends (httplb, the gRPC balancer) and its
// proxies: limits on concurrent work that fail fast instead of queueing
// more load on a struggling fleet.
//
// A [Breaker] holds one set of Envoy's four thresholds (maximum
// connections, pending requests, requests and concurrent retries) and the
// gauges they limit. A [Group] pairs a breaker for a whole pool with one
// per member, as Envoy's cluster-level thresholds and HAProxy's per-server
// maxconn do, and acquires both levels at once.
//
// # Retry budget
//
// With [RetryBudget] set, the number of retries in flight is limited to a
// share of the work in flight rather than a fixed number, as Envoy's
// retry_budget: at most max(MinConcurrency, Percent/100 × (active + pending
// requests)). In an outage where every attempt fails, retries then add at
// most Percent to the load the fleet sees, however many clients retry,
// instead of multiplying it by the number of attempts.
//
// # Backoff
//
// [Backoff] is the wait before a retry, Envoy's jittered exponential
// back-off (25 ms base, 250 ms cap by default); [Backoff.Next] says whether
// a retry still fits before the context's deadline.
//
// # Overflow
//
// Work refused by a threshold is counted per threshold ([Breaker.Stats])
// and reported with an error that wraps [ErrOpen] and names the threshold
// ([ErrMaxConnections], [ErrMaxPendingRequests], [ErrMaxRequests],
// [ErrMaxRetries], [ErrRetryBudgetExhausted]), so callers branch with
// errors.Is.
//
// Every method is safe for concurrent use, never blocks and does not
// allocate (except [Group.Member] the first time it sees a member).
package circuit
