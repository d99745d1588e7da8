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
//   - Passive outcomes: every unit of work a front-end ends with
//     [balancer.Endpoint.Done] reaches the checker that follows the pool
//     (it is the pool's [balancer.Observer]) and feeds Envoy-style outlier
//     detection: consecutive failures, a failure rate and a slow-response
//     rate over a bucketed sliding window. An outlier is ejected for a
//     time that grows with each ejection (base × n, capped) and decays
//     while it behaves, until a probe passes (unless
//     [PassiveConfig.HoldEjection]), and never more than a configured
//     share of the targets is ejected at once.
//   - Agent reports (HAProxy agent-check words: "up", "ready", "drain",
//     "maint", "down", "75%", "weight=10", parsed by [ParseAgent]), read
//     from an agent port by [Agent] or from a response header by [HTTP]:
//     an operator or the backend itself can drain a target or change its
//     weight.
//
// The pool is the one list of members: [Checker.Follow] makes the checker
// probe every member of a [balancer.Pool] from a [Template], follow the
// pool's membership as it changes, and keep the pool's health, drain and
// weights in step. Changes are also published as [Event] values on
// transitions only (see [Checker.Subscribe]).
//
// Wiring a pool takes two calls, and front-ends need none:
//
//	chk, err := health.New(health.Config{})
//	// ...
//	err = chk.Follow(pool, health.Template{Probe: health.HTTP{Path: "/healthz"}})
//
// Members start unknown (out of the ready set) and are probed at once;
// a first verdict gives full weight, a recovery slow-starts. Addresses
// outside any pool can be checked with [Checker.SetTarget].
//
// Observe, the passive hot path, looks the target up through an atomic
// pointer to an immutable map, updates per-target atomics and never
// allocates, locks or blocks. Everything slower (ejection, events, logs)
// happens on the target's own goroutine.
package health
