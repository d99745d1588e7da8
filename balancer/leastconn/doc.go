// Package leastconn implements least connections (least outstanding
// requests): each pick goes to an endpoint with the fewest units of work
// in flight relative to its weight, as counted by [balancer.Endpoint.Start]
// and [balancer.Endpoint.Done].
//
// The cost of an endpoint is (in-flight + 1) / weight. The +1 counts the
// pick being made, so among idle endpoints the heavier one wins and
// weights matter at low load too (Envoy's least-request does the same
// with its active-request bias of 1).
//
// Ready sets of up to [DefaultScanLimit] endpoints (or Builder.ScanLimit)
// are scanned in full: the pick is an exact minimum, ties broken
// uniformly at random. Larger sets use the power of two choices
// (Mitzenmacher): draw two distinct endpoints at random and take the
// cheaper, ties at random. Two choices avoid both the O(n) scan and the
// herd a global minimum causes when many pickers see the same stale
// counts, and they bound the maximum load far better than one random
// choice. Counters are read without locks, so concurrent picks may see
// each other's work a moment late; that is the usual, harmless race.
//
// Picks are lock-free, never block and do not allocate; random numbers
// come from math/rand/v2's per-thread runtime source.
package leastconn
