//go:build !linux

package main

import (
	"context"
	"io"
)

// labStrategies lists the kernel data planes, which need Linux.
func labStrategies() []strategy {
	skip := func(name string) strategy {
		return strategy{name: name, run: func(context.Context, demoConfig, io.Writer) (result, error) {
			return result{name: name, skip: "needs Linux (network namespaces, nftables, XDP)"}, nil
		}}
	}
	return []strategy{skip("iplb-nat"), skip("l2lb-dsr")}
}
