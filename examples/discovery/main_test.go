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
  12 requests answered by: alpha bravo
charlie added to the file
  members: alpha bravo charlie
  ready:   alpha bravo charlie
  12 requests answered by: alpha bravo charlie
charlie stopped: its probes fail, it stays a member
  members: alpha bravo charlie
  ready:   alpha bravo
  12 requests answered by: alpha bravo
alpha removed from the file
  members: bravo charlie
  ready:   bravo
  12 requests answered by: bravo
`, out.String())
}
