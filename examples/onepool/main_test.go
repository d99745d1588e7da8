package main

import (
	"bytes"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun checks what the example prints: every front-end follows the one
// pool.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	want := `two members:
  proxy    -> alpha beta
  redirect -> alpha beta
  dns      -> alpha beta
  tcp      -> alpha beta
gamma added to the pool (nothing else):
  proxy    -> alpha beta gamma
  redirect -> alpha beta gamma
  dns      -> alpha beta gamma
  tcp      -> alpha beta gamma
alpha killed:
  proxy    -> beta gamma
  redirect -> beta gamma
  dns      -> beta gamma
  tcp      -> beta gamma
`
	if got := out.String(); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}
