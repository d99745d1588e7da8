//go:build !linux

// Command iplb shows lbkit's kernel NAT load balancer; it needs Linux.
package main

import "fmt"

func main() { fmt.Println("iplb example: skipped: needs Linux (network namespaces and nftables)") }
