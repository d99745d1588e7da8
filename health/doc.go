// Package health is lbkit's health plane: one [Checker] decides which
// backends are alive for every front-end (redirects, DNS answers, reverse
// proxies, kernel data planes).
//
// A Checker combines three sources of truth per [Target]:
//
//   - Active probes ([Prober]: [TCP], [HTTP], [UDP], [Agent], DNS queries
//     from package health/dnsprobe, a
//     [ProberFunc], or several at once with [All]) run on a jittered
//     schedule with HAProxy-style rise and fall thresholds, a probe
//     timeout, and faster intervals while the target is down or changing
//     state.
//   - Passive outcomes that front-ends report through [Checker.Observe]
//     (the [Observer] interface) feed Envoy-style outlier detection:
//     consecutive failures, a failure rate and a slow-response rate over a
//     bucketed sliding window. An outlier is ejected for a time that grows
//     with each ejection (base × n, capped) and decays while it behaves,
//     and never more than a configured share of the targets is ejected at
//     once.
//   - Agent reports (HAProxy agent-check words: "up", "ready", "drain",
//     "maint", "down", "75%", "weight=10", parsed by [ParseAgent]), read
//     from an agent port by [Agent] or from a response header by [HTTP]:
//     an operator or the backend itself can drain a target or change its
//     weight.
//
// Changes are published as [Event] values on transitions only (see
// [Checker.Subscribe]); [Checker.Drive] wires a checker to a
// [balancer.Pool] in one call, so the pool's ready set, drain and weights
// follow the checker.
//
// Wiring a pool takes three calls:
//
//	chk, err := health.New(health.Config{})
//	// ...
//	err = chk.SetTarget(health.Target{Addr: addr, Probe: health.HTTP{Path: "/healthz"}})
//	// ...
//	defer chk.Drive(pool)() // pool.SetHealthy, SetDraining, SetWeight from now on
//
// and front-ends report what they see with chk.Observe(addr, outcome).
//
// Observe is the hot path: it looks the target up through an atomic
// pointer to an immutable map, updates per-target atomics and never
// allocates, locks or blocks. Everything slower (ejection, events, logs)
// happens on the target's own goroutine.
package health
