// Package balancer is lbkit's core: it decides which backend gets the next
// unit of work, for every front-end (HTTP redirects, DNS answers, reverse
// proxies, kernel NAT and MAC-rewrite data planes).
//
// A [Pool] holds the members ([Backend] as configured, [Endpoint] as live
// state) and publishes an immutable [Snapshot] of those ready for work,
// with effective weights (slow start), panic mode and zone preference
// already applied. A [Builder] (one package per policy: roundrobin,
// weighted, random, leastconn, ewma, ringhash, maglev, rendezvous,
// sourcehash, first) turns the ready set into a [Picker]. Picks read the
// current snapshot through an atomic pointer: they never lock, never block
// and never allocate. Mutations rebuild the snapshot only when the ready
// set or an effective weight changes.
//
// Work sent to an endpoint is tracked with [Endpoint.Start] and
// [Endpoint.Done], which feed the in-flight counts and peak-EWMA latency
// that load-aware policies read. Those counters live on the Endpoint, so
// they survive rebuilds.
package balancer
