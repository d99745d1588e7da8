package daemon

import (
	"os"
	"testing"
)

// requireTool skips a test whose external tool is missing, except in CI
// (CI=true), where the test script installs it and a missing tool is a
// failure.
func requireTool(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (CI installs it through scripts/test.sh)", what)
	}
	t.Skipf("%s not installed; scripts/test.sh installs it as root", what)
}
