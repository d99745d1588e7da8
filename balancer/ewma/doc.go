// Package ewma implements peak-EWMA load balancing with two random
// choices, as in Finagle's and Linkerd's balancers: each pick draws two
// distinct endpoints and takes the one with the lower expected cost,
//
//	cost = latency EWMA × (in-flight + 1) / weight,
//
// where the latency estimate is [balancer.Endpoint.LatencyEWMA] (a peak
// EWMA: a slow sample takes effect at once, fast ones are blended in with
// the pool's [balancer.Config.EWMADecay] τ) and in-flight counts come from
// [balancer.Endpoint.Start] and [balancer.Endpoint.Done]. Latency-aware
// choices send less work to a slow or overloaded backend than round robin
// or least connections, which only see queue lengths.
//
// # Decay towards zero
//
// Between samples the estimate decays towards zero with time constant τ,
// cost × exp(-Δt/τ) for the time Δt since the endpoint's last sample, as
// Finagle does, so an idle backend that was once slow is tried again
// instead of being starved forever.
//
// Reading the clock costs 20–140 ns on the VMs lbkit was measured on
// (kvm-clock; more under load), more than
// the rest of a pick. Pick does not read it: because the decay is
// exponential, comparing two endpoints' decayed costs,
//
//	c₁·exp(-(now-s₁)/τ)  vs  c₂·exp(-(now-s₂)/τ),
//
// is the same as comparing c₁·exp(-(s₂-s₁)/τ) with c₂: the factor
// exp(-now/τ) cancels, only the difference between the two sample times
// matters, and the result is exact for every now. Pick skips even that
// exponential when the two samples are less than τ/4096 apart (a relative
// error below 0.025%), which is the common case under load, and otherwise
// settles most comparisons with the bounds 1-x ≤ e^-x ≤ 1/(1+x+x²/2)
// before calling math.Exp. It falls back
// to the clock only when the two endpoints use different decay constants
// (endpoints from pools with different Config.EWMADecay in one picker), or
// when it must compare a sampled cost above the no-sample penalty.
//
// # Endpoints without a sample
//
// An endpoint with no latency sample yet costs 0 while nothing is in
// flight on it, so a new backend gets a first request promptly; while
// that request is in flight it costs [Penalty] + in-flight/weight
// (Finagle's rule, with weights), so a new backend is not flooded before
// its speed is known. Where front-ends report no latencies at all, every
// cost is of that form and the picker degrades to least connections per
// weight by two choices.
//
// Picks are lock-free, never block and do not allocate.
package ewma
