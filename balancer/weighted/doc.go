// Package weighted implements weighted round robin: every ready endpoint
// gets a share of the picks proportional to its effective weight, in a
// smooth, deterministic order, without locks on the pick path.
//
// Build precomputes a schedule, a cyclic list of endpoint indices, in
// earliest-deadline-first (stride) order: the k-th of endpoint i's c_i
// slots is due at (k + ½)/c_i of the cycle, and slots are laid out by due
// time, ties in ready-set order. Weights 5, 1, 1 (a, b, c) give the cycle
// a a a b c a a; weights 2, 1 give a b a. Pick walks the schedule with
// the same contention-avoiding counters as the roundrobin package: a few
// cache-line-padded counters, one per goroutine stack, each walking the
// whole cycle from a random offset, so the spread over any interval stays
// within the number of counters of the schedule's own.
//
// Weights are floats (effective weights shrink during slow start).
// When every weight times 1, 10, 100, 1000 or 10000 is an integer (to one
// part in 10⁹) and those integers, divided by their greatest common
// divisor, sum to at most [MaxSchedule], the schedule is exact: its cycle
// gives every endpoint exactly its weight share. Otherwise the cycle has
// MaxSchedule slots, apportioned by largest remainder, so every
// endpoint's share is within 1/MaxSchedule (0.0015 percentage points) of
// its weight share; an endpoint whose share is below that may get no slot.
package weighted
