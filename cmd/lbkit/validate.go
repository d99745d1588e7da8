package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/lbkit/lbkit/config"
)

// validateMain checks a configuration file the way `lbkit serve` does
// before it starts anything, and starts nothing: it prints "FILE: ok", or
// every problem as "FILE:LINE:COL: message" (the form editors and CI
// annotate), and exits 1 when there is one.
func validateMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lbkit validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "the configuration file to check (required)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: lbkit validate -config FILE\n\n"+
			"Checks FILE as lbkit serve would and starts nothing. Prints \"FILE: ok\",\n"+
			"or each problem as FILE:LINE:COL: message and exits 1.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *path == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	_, err := config.Load(*path)
	var errs config.Errors
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "%s: ok\n", *path)
		return 0
	case errors.As(err, &errs):
		for _, e := range errs {
			fmt.Fprintln(stderr, e)
		}
		return 1
	default:
		fmt.Fprintf(stderr, "lbkit validate: %v\n", err)
		return 1
	}
}
