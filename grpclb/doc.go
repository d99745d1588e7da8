// Package grpclb is a gRPC-Go load-balancing policy built on lbkit: it
// picks with lbkit's policies (peak-EWMA, least request, ring hash with
// bounded loads keyed by a metadata value, Maglev, round robin, random),
// with slow start, and enforces lbkit's circuit breakers and retry budget
// (package circuit). It lives in its own Go module, so lbkit's core does
// not depend on gRPC.
//
// Importing the package registers the policy under [Name] ("lbkit");
// a service config chooses it and the lbkit policy ([Config]):
//
//	conn, err := grpc.NewClient("dns:///fleet.internal:50051",
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{
//		  "loadBalancingConfig": [{"lbkit": {"policy": "ewma", "slowStart": "30s",
//		    "circuit": {"pool": {"retryBudget": {"percent": 20}}}}}],
//		  "healthCheckConfig": {"serviceName": ""},
//		  "methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3,
//		    "initialBackoff": "0.01s", "maxBackoff": "0.1s", "backoffMultiplier": 2,
//		    "retryableStatusCodes": ["UNAVAILABLE"]}}]}`),
//		grpc.WithChainUnaryInterceptor(grpclb.UnaryClientInterceptor(grpclb.RetryPolicy{MaxAttempts: 3})))
//
// # Members and health
//
// Each resolved address (IP:port, as the dns resolver gives) is a member of
// an lbkit balancer.Pool with one SubConn. The SubConn's connectivity state
// is the member's health: READY is healthy and in the ready set;
// TRANSIENT_FAILURE, or NOT_SERVING from the standard health service
// (google.golang.org/grpc/health, which this package imports, enabled by
// the service config's healthCheckConfig) is unhealthy; a member that was
// never READY is not yet judged (balancer.HealthUnknown). A member that
// comes back after a failure, and one that joins a channel already in
// service, ramps up over the slow-start window.
//
// # Picks and outcomes
//
// The picker reads the pool's current snapshot (lock-free, no allocation
// in lbkit's part) and maps the chosen member to its READY SubConn. The
// pick key comes from WithKey on the RPC's context or from Config.Key
// ("header:NAME" reads outgoing metadata, "path" the method). Each RPC
// holds the member's in-flight count from the pick to its end; Done reports
// the latency to the member's peak-EWMA and the outcome (Failure: the
// status codes a backend is to blame for) to the pool.
//
// # Retries and circuit breakers
//
// gRPC's retryPolicy retries attempts that a server answered with a
// retryable status or never saw (gRFC A6); an RPC in flight on a server
// that dies is not retried, since gRPC cannot know the method is
// idempotent. [UnaryClientInterceptor] with a [RetryPolicy] retries those
// too, for the methods the caller declares idempotent, on another backend,
// after a jittered backoff that must fit before the deadline. Either way
// this policy decides whether each retry may go. With the interceptor
// installed the picker knows an RPC's attempts apart: a retry needs a retry slot from the breakers, so
// with a retry budget the retries in flight stay under a share of the RPCs
// in flight (an RPC between attempts counts as pending, in the budget's
// base, as Envoy counts pending requests). A pick refused by a breaker
// fails the RPC at once with UNAVAILABLE and a message naming the
// threshold; [Overflow] recognises it. Without the interceptor every
// attempt is admitted as a first attempt (the per-request thresholds still
// apply).
package grpclb
