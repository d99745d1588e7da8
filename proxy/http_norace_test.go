//go:build !race

package proxy

// raceEnabled reports a -race build: load tests shrink under it.
const raceEnabled = false
