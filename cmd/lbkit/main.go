// Command lbkit runs lbkit's load balancers.
//
//	lbkit demo [flags]   the classic experiment through every strategy
//	lbkit serve [-config FILE]    run the load balancer from a configuration file
//	lbkit validate -config FILE   check a configuration file, start nothing
//
// Run `lbkit demo -h` for the flags.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "demo":
		return demoMain(ctx, args[1:], stdout, stderr)
	case "serve":
		return serveMain(ctx, args[1:], stdout, stderr)
	case "validate":
		return validateMain(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "lbkit: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: lbkit <command> [flags]

commands:
  demo    start backends on loopback and drive the classic experiment
          (10,000 requests at 1,000 concurrency) through every strategy
  serve   run the load balancer from a configuration file (-config FILE;
          without it, an embedded default with built-in backends)
  validate  check a configuration file (-config FILE) and start nothing
`)
}
