//go:build !linux

package l2lb

// runChild reports false: child balancers run on Linux only.
func runChild() bool { return false }
