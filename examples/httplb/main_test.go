package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example and checks what it prints: an even spread,
// no failure when a backend dies, and one backend per client behind the
// reverse proxy.
func TestRun(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 4, out.String())
	assert.Regexp(t, `^9 requests: alpha=\d beta=\d gamma=\d  failed: 0$`, lines[0])
	assert.Regexp(t, `^alpha killed, 9 requests: beta=\d gamma=\d  failed: 0$`, lines[1])
	assert.Equal(t, "retry overflows: 0", lines[2])
	assert.Equal(t, "through a ReverseProxy, 5 requests from one client reach 1 backend", lines[3])
}
