// Package daemon runs lbkit as a load balancer from a configuration file
// (`lbkit serve`): it builds the pools, the health checker and the
// listeners a config.Config declares, applies a new configuration as a
// diff (unchanged pools keep their members' state, unchanged listeners
// keep their sockets), and serves the admin endpoint: status as JSON and
// HTML, operator drain and weight overrides, Prometheus metrics.
package daemon
