// Package first implements first-available picking for active/backup
// setups: every pick goes to the first ready endpoint in ready-set order,
// which a [balancer.Pool] keeps in configuration order. List the primary
// first and the backups after it; when the primary fails its health
// checks or drains, the pool drops it from the ready set and picks move to
// the next backend, and back again once it recovers (slow start does not
// delay that: weights are ignored).
//
// In panic mode (see [balancer.Config.PanicThreshold]) the ready set
// holds unhealthy members too; the picker then takes the first endpoint
// that is currently healthy, and the first of the set only if none is.
//
// Picks are lock-free, never block and do not allocate.
package first
