// Command gen writes docs/config.md, the configuration reference, from the
// source of package config. Run it through go generate in config/.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/lbkit/lbkit/config/internal/refdoc"
)

func main() {
	out := flag.String("o", "../docs/config.md", "the file to write")
	dir := flag.String("dir", ".", "the directory of package config")
	flag.Parse()
	b, err := refdoc.Markdown(*dir)
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
