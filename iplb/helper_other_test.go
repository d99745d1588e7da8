//go:build !linux

package iplb

// runHelper reports false: the helper balancer runs on Linux only.
func runHelper() bool { return false }
