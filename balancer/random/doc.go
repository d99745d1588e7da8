// Package random implements random picking: uniform when every ready
// endpoint has the same weight, proportional to weight otherwise.
//
// Weighted picks use Vose's alias method, built once per ready set: a pick
// draws one 64-bit random number, whose high bits (times n) choose a
// column and whose remaining fraction flips that column's biased coin, so
// every pick costs O(1) whatever the weights. A tiny example with weights
// 3 and 1 (n = 2, mean 2): column 0 holds probability 1 for endpoint 0;
// column 1 holds endpoint 1 with probability 1/2 and aliases endpoint 0
// otherwise; endpoint 0 is chosen with 1/2 + 1/2·1/2 = 3/4.
//
// Random numbers come from math/rand/v2's top-level functions, which
// draw from per-thread runtime state: no shared lock, no shared cache
// line. Picks are lock-free and do not allocate. Random picking ignores
// load; with few picks per endpoint its spread is wider than round
// robin's (binomial), and unlike round robin it needs no shared counter.
package random
