package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out))
	assert.Equal(t, `file lists alpha and bravo
  members: alpha bravo
  ready:   alpha bravo
  6 requests: alpha=3 bravo=3
charlie added to the file
  members: alpha bravo charlie
  ready:   alpha bravo charlie
  6 requests: alpha=2 bravo=2 charlie=2
charlie stopped: its probes fail, it stays a member
  members: alpha bravo charlie
  ready:   alpha bravo
  6 requests: alpha=3 bravo=3
alpha removed from the file
  members: bravo charlie
  ready:   bravo
  6 requests: bravo=6
`, out.String())
}
