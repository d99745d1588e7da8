// Package ringhash implements consistent hashing on a ring of virtual
// nodes (Karger et al.; Ketama; Envoy's RING_HASH), optionally with
// bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing
// with Bounded Loads", 2016; HAProxy's hash-balance-factor, Envoy's
// hash_balance_factor).
//
// # The ring
//
// Every endpoint places virtual nodes ("points") on a 64-bit ring, as many
// as its share of the effective weight asks for; a key belongs to the
// first point at or after the key's position, walking clockwise and
// wrapping at the top. Points are derived from the endpoint's address, so
// the same backend lands on the same points in every build and in every
// balancer instance, and removing one of N backends moves only the keys
// that landed on its points: about 1/N of them.
//
// A tiny worked example, with an 8-bit ring for readability: A has points
// 40 and 200, B has 90 and 150. Sorted: 40(A) 90(B) 150(B) 200(A). Key 100
// goes to 150 (B); key 210 wraps to 40 (A). Remove B and key 100 walks on
// to 200 (A); keys that were on A stay on A.
//
// Finding the point costs O(1): besides the sorted points the picker keeps
// an index from the top bits of a position to the first point with those
// bits, so a pick reads one index entry and, on average, about one point.
//
// # Bounded loads
//
// With [Builder.Epsilon] ε > 0, a pick walks clockwise past endpoints that
// are already at capacity: an endpoint e with effective weight w_e of the
// total W is at capacity when its in-flight count ([balancer.Endpoint.InFlight])
// is at least ⌈(1+ε)·(T+1)·w_e/W⌉, where T is the total in-flight work on
// the ready set (the +1 counts the work being placed). With equal weights
// that is ⌈(1+ε)·average⌉. Some endpoint is always under capacity, so the
// walk ends; keys still go to their own endpoint whenever it is not
// overloaded, and the expected walk is short (O(1/ε²) points in the
// paper's analysis).
//
// Cost of reading load, and the choice made here: the key's own endpoint's
// counter is read on every pick. T is needed only when that endpoint
// already has work in flight and a cheap lower bound (T ≥ its own count)
// does not settle the question; then T is summed exactly over the n
// endpoints, O(n) atomic loads of counters that sit on their own cache
// lines (1–3 µs for n=1000 on a 2-core VM). lbkit takes the exact sum rather than a
// cached or sampled estimate because the bound is only as good as T: a
// stale T would let an endpoint exceed it. A walk that passes 4n+16 points
// without finding room (possible only when concurrent picks race) ends
// with a scan for the endpoint with the least in-flight work per weight,
// so a pick is O(n) in the worst case.
//
// The bound holds for work placed one pick at a time (pick, then
// [balancer.Endpoint.Start]). Picks that run concurrently read the
// counters before either calls Start, so each of k racing picks may
// overshoot the bound by at most k-1.
package ringhash
