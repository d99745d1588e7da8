// Package sourcehash sends each client to the same backend: the policy of
// HAProxy's "balance source" and nginx's "hash $remote_addr". The client
// is the pick's key, usually [balancer.HashAddr] of the client's IP
// address (or [balancer.HashFlow] of a flow); picks without a key choose
// at random by weight.
//
// The key is mapped to an endpoint through a weighted table, in one of two
// ways, as HAProxy's hash-type offers:
//
//   - [Consistent] (the default) uses a Maglev table ([maglev.NewTable],
//     the same code the kernel data planes use): O(1) picks, shares within
//     about 1% of the weights, and when a backend leaves only about 1/N of
//     clients move (measured 1.0–1.6 × the ideal for 10–100 backends with
//     the default 65537 slots). Maglev rather than jump consistent hashing
//     because jump hashing has no weights and can only remove the last
//     bucket: removing a backend from the middle moves most clients.
//     Rather than a ring because the table gives near-exact shares with one
//     memory access per pick.
//   - [MapBased] is HAProxy's default: a small table in which each backend
//     holds a run of slots in proportion to its weight (up to 256 per
//     backend, divided by their greatest common divisor), and the key
//     selects a slot by multiplication. Shares are exact to 1/256 and the
//     table is tiny, but any change to the ready set (including each step
//     of a slow start) moves a large fraction of clients. Use it where
//     membership is static and stickiness across changes does not matter.
package sourcehash
