// Package roundrobin implements plain round robin: every ready endpoint
// gets the next unit of work in turn, regardless of its weight or load.
//
// Round robin ignores weights by design, like gRPC's round_robin; use the
// weighted package for weighted round robin, and leastconn or ewma when
// backends differ in speed (round robin keeps sending a slow backend its
// full share, so its queue and the tail latency grow).
//
// Picks are lock-free and do not allocate. Instead of one shared atomic
// counter, which bounces its cache line between cores and loses to a mutex
// under contention, a picker keeps a few cache-line-padded counters and a
// goroutine uses the one its stack address selects. Each counter starts at
// a random offset (so pickers rebuilt at the same moment do not herd onto
// the same backend) and walks the endpoints in order, so over any interval
// every endpoint's share is within the number of counters (16, or 256
// above 4 CPUs) of perfect; a single goroutine picking in a loop sees
// strict rotation (unless the runtime moves its stack, which at worst
// switches it to another counter).
package roundrobin
