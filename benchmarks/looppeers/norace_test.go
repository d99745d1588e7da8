//go:build !race

package looppeers

// raceEnabled reports a -race build, which allocates.
const raceEnabled = false
