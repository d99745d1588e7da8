package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example and checks what it prints. Ports come from the
// kernel and round robin starts at a random backend, so the test checks
// structure: every client gets back what it sent after half-closing,
// from a live backend, which names the client's own address as the PROXY
// header's source; the dead address was tried (the example goes on until
// it is) and every dial to it is counted as a failure, at most one per
// client since the proxy retries elsewhere; the proxy drains.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.GreaterOrEqual(t, len(lines), 4+2, out.String())
	clients := len(lines) - 2
	require.LessOrEqual(t, clients, 12, out.String())

	clientRE := regexp.MustCompile(`^client (\d+) \((127\.0\.0\.1:[1-9]\d*)\): (alpha|beta) got "([a-z]*)" from (\S+)$`)
	for i, line := range lines[:clients] {
		m := clientRE.FindStringSubmatch(line)
		require.NotNil(t, m, "client line %q", line)
		assert.Equal(t, strconv.Itoa(i), m[1], "client number")
		assert.Equal(t, strings.Repeat("ab", i+1), m[4], "data the backend read up to the half-close")
		assert.Equal(t, m[2], m[5], "PROXY header's source is the client's address")
	}

	m := regexp.MustCompile(`^failed dials to 127\.0\.0\.1:[1-9]\d* → (\d+) \(each retried on a live backend\)$`).FindStringSubmatch(lines[clients])
	require.NotNil(t, m, "failures line %q", lines[clients])
	failed, _ := strconv.Atoi(m[1])
	assert.GreaterOrEqual(t, failed, 1, "the dead address was tried and its failure recorded")
	assert.LessOrEqual(t, failed, clients, "more than one failed dial for one client")

	assert.Equal(t, "drained", lines[clients+1])
}
