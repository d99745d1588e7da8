// Package rendezvous implements rendezvous hashing, also called highest
// random weight (HRW) hashing (Thaler and Ravishankar, 1996), weighted
// with the logarithmic method (Schindelhauer and Schomaker, "Weighted
// Distributed Hash Tables", 2005; the method behind Ceph's straw2).
//
// For a key k, every endpoint i draws a pseudo-random number
// u = h(k, i) / 2^64 in (0, 1) and scores -w_i / ln(u); the key goes to
// the highest score. The scores are exponential random variables with
// rates proportional to 1/w_i, so endpoint i wins with probability
// exactly w_i / Σw. Removing an endpoint moves only the keys it won (the
// ideal 1/N, with no ring or table to approximate it), and adding one
// moves only the keys it now wins.
//
// A tiny worked example with equal weights, where the score is monotone
// in h: for key 7, h(7, A) = 0.61, h(7, B) = 0.93, h(7, C) = 0.20 (as
// fractions of 2^64), so B wins. Remove C: B still wins. Remove B: A wins,
// and only the keys B won moved.
//
// Cost: a pick hashes the key with every endpoint, O(n): about 2 ns per
// endpoint, so about 20 ns for 3 endpoints and 2 µs for 1000. That is
// fine for the small sets rendezvous hashing suits (DNS answers, a few
// dozen mirrors); for hundreds of endpoints and hot paths prefer maglev or
// ringhash, which are O(1) per pick after an O(n log n) build. Endpoints
// of equal effective weight form a group in which the highest hash wins,
// so only one logarithm per distinct weight is taken (one or two groups
// in the common case, a few more during slow start). Picks without a key
// choose by weight at random in O(log n).
package rendezvous
