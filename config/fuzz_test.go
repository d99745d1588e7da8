package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/lbkit/lbkit/config"
)

// FuzzParse checks that Parse never panics or hangs, that a rejected file
// always gets at least one positioned error, and that an accepted one is
// equal to itself under Diff.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"../examples/config/*.yaml", "testdata/broken/*.yaml"} {
		files, err := filepath.Glob(glob)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte("pools:\n  - &m0 {name: x}\n  - &m1 {<<: [*m0, *m0]}\n")) // merge of merges
	f.Add([]byte("x: &a [*a]\n"))                                          // an anchor inside itself
	f.Add([]byte("listeners:\n  - {type: dns, zones: [{origin: t., records: \"$GENERATE 1-9 x$ A 1.2.3.$\"}]}\n"))
	// Relative file names resolve against examples/config, so seeds that
	// name key files find them.
	name := filepath.Join("..", "examples", "config", "fuzz.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(name, data)
		if err != nil {
			var errs config.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty Errors", err, err)
			}
			for _, e := range errs {
				if e.File != name || e.Msg == "" || e.Line < 0 || e.Column < 0 {
					t.Fatalf("bad error %#v", e)
				}
			}
			if c != nil {
				t.Fatal("a Config with an error")
			}
			return
		}
		if !config.Diff(c, c).Empty() {
			t.Fatal("a configuration differs from itself")
		}
	})
}
