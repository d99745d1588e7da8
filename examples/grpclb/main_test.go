package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example and checks what it prints.
func TestRun(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(&out))
	assert.Equal(t, `connected to 3 backends
user ann: 11 calls on one backend: true
NOT_SERVING: ann moved to another backend; failed calls: 0
stopped: 20 of 20 calls succeeded
`, out.String())
}
