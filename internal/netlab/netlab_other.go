//go:build !linux

package netlab

import (
	"errors"
	"testing"
)

// ErrNotPermitted is returned where labs cannot be built; outside Linux
// that is always.
var ErrNotPermitted = errors.New("netlab: network namespace labs need Linux")

// RequireRoot skips the test: network namespace labs need Linux.
func RequireRoot(t testing.TB) {
	t.Helper()
	t.Skip("netlab: skipping privileged lab test: network namespace labs need Linux")
}
