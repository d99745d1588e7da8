// Package config reads and checks the configuration file of lbkit serve:
// pools of backends (members, policy, key, slow start, panic threshold,
// zones, a health check template, passive outlier detection) and listeners
// of every strategy (redirect, dns, http, tcp, iplb, l2lb) that name the
// pools they serve from, plus the admin endpoint, the access log and the
// shutdown deadline. The reference of every field, generated from the
// comments in this package, is docs/config.md; commented examples are in
// examples/config.
//
// [Load] and [Parse] decode a YAML file strictly and validate it: unknown
// or repeated fields, values of the wrong kind, bad durations, addresses,
// keys and policies, unknown pools, duplicate names, two listeners on one
// address and an admin endpoint off loopback without a token are all
// reported together, as [Errors] whose every [Error] names the file, line
// and column. The files a configuration names (tokens, cookie keys, TSIG
// secrets, zone files, certificates) are read and checked at the same time,
// so a file that loads is one lbkit serve can start from.
//
// [Diff] compares two loaded configurations for a hot reload: pools and
// listeners added, removed or changed, whether a pool's change is limited
// to its members (so the running pool and its members' state can be kept),
// and whether a listener's address changed (so its socket must be
// replaced).
//
// This package does not import the front-ends: it parses and validates,
// and lbkit serve maps a [Config] onto balancer pools, health checkers and
// servers. A loaded Config is not modified afterwards and may be read from
// any goroutine.
package config

//go:generate go run ./internal/refdoc/gen -o ../docs/config.md
