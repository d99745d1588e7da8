package main

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the demo end to end, so it keeps working as the packages
// it shows change.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo runs for four seconds")
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
}
