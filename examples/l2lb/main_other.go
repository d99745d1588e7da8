//go:build !linux

// Command l2lb shows lbkit's XDP balancer in a network-namespace lab. XDP
// and network namespaces exist only on Linux; elsewhere it says so and
// exits 0.
package main

import "fmt"

func main() {
	fmt.Println("l2lb example: XDP and network namespaces need Linux; nothing to show here.")
}
