// Package maglev implements Maglev consistent hashing (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016),
// weighted as in Envoy, as a balancer policy and as an exported lookup
// table.
//
// The table is the single source of truth for every data plane in lbkit:
// Go pickers call [Table.Lookup], and kernel data planes (iplb, l2lb) copy
// its slots into a BPF or nftables map, writing only the slots that
// [Table.Diff] reports as changed.
//
// How the table is filled, on a tiny example: with size M = 7 and two
// backends A and B (A's id is the smaller), each gets a permutation of the
// slots from its own hash, offset + j·skip mod M (skip in [1, M-1], so
// every permutation visits every slot). Say A's is 3 0 4 1 5 2 6 and B's
// is 0 2 4 6 1 3 5. Backends take turns, in order of id, claiming the next
// free slot of their permutation: A takes 3, B takes 0, A takes 4 (0 is
// taken), B takes 2, A takes 1, B takes 6, A takes 5. Table:
// [B A B A A A B]. Removing B leaves A's choices unchanged wherever it had
// them, so mostly B's slots move. Weights change how often a backend gets
// a turn: a backend with half the largest weight claims a slot every other
// round. Because turns go by id, the table depends only on the set of
// backends and weights, not on the order the caller lists them in.
//
// # Balance and disruption
//
// Every backend's share of slots is within one slot (for equal weights)
// or about 1% (weighted) of its ideal. The price of that balance is that
// a change also moves some slots between backends that stayed: when one
// of N backends leaves, a removed slot's new owner no longer claims the
// slot it would have, and the shift cascades through later turns. The
// cascade grows as slots per backend shrink. Measured here, the fraction
// of slots that change owner when one of N equal backends leaves, as a
// multiple of the ideal 1/N:
//
//	size       N=3   N=10  N=100  N=1000
//	65537      1.00  1.03  1.55   7.0
//	262139                 1.25   5.9
//	1048573                1.11   3.0
//	4194301                1.05   1.9
//
// So the default 65537 slots keep disruption within 1.2 × ideal up to a
// few dozen backends; larger pools need a larger table (build time grows
// a little faster than the size: 3 ms, 11 ms, 80 ms, 0.4–0.8 s for the
// sizes above with 100–1000 backends) or a policy without a table
// (ringhash, rendezvous) where moving few keys matters more than exact
// shares.
package maglev
