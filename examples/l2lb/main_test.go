//go:build linux

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

	"github.com/lbkit/lbkit/internal/netlab"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example in its namespace lab and checks what it
// prints. Which backend a new connection reaches depends on the client's
// source port, so the test checks the spread within bounds, and exactly:
// the backends pass the direct-server-return check, replies bypass the
// balancer (it receives a sliver of what the client downloads), the
// unhealthy backend gets no new connection and leaves the ring, and the
// XDP program drops nothing.
func TestRun(t *testing.T) {
	netlab.RequireRoot(t)
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 14, out.String())

	assert.Equal(t, []string{
		"be1 (198.18.0.3): set up for direct server return",
		"be2 (198.18.0.4): set up for direct server return",
		"be3 (198.18.0.5): set up for direct server return",
		"balancer attached to lb/eth0 in generic mode; VIP 198.18.0.100:80",
		"",
	}, lines[:5])

	// fmt prints maps sorted by key.
	spreadRE := regexp.MustCompile(`map\[(.*)\]$`)
	spread := func(line string) map[string]int {
		t.Helper()
		m := spreadRE.FindStringSubmatch(line)
		require.NotNil(t, m, "spread in %q", line)
		counts := map[string]int{}
		total := 0
		for _, kv := range strings.Fields(m[1]) {
			k, v, ok := strings.Cut(kv, ":")
			require.True(t, ok, "spread in %q", line)
			n, err := strconv.Atoi(v)
			require.NoError(t, err, "spread in %q", line)
			counts[k] = n
			total += n
		}
		assert.Equal(t, 300, total, "connections served: %q", line)
		return counts
	}
	require.True(t, strings.HasPrefix(lines[5], "300 new connections to the VIP were served by: map["), lines[5])
	// 300 × ⅓ is binomial with σ ≈ 8.2; 300 × ½ σ ≈ 8.7. The bounds are
	// more than 4σ wide.
	before := spread(lines[5])
	require.Len(t, before, 3, lines[5])
	for _, be := range []string{"be1", "be2", "be3"} {
		assert.InDelta(t, 100, before[be], 40, "%s: %q", be, lines[5])
	}

	m := regexp.MustCompile(`^4 downloads of 8 MiB: the client received (\d+) bytes; the balancer's eth0 received (\d+) \(requests and ACKs only: replies bypass it\)$`).FindStringSubmatch(lines[6])
	require.NotNil(t, m, "download line %q", lines[6])
	clientRx, _ := strconv.Atoi(m[1])
	lbRx, _ := strconv.Atoi(m[2])
	assert.GreaterOrEqual(t, clientRx, 4*8<<20, "the client received the four downloads")
	assert.Less(t, lbRx, clientRx/20, "the balancer saw the replies: direct server return is broken")
	assert.Equal(t, "", lines[7])

	require.True(t, strings.HasPrefix(lines[8], "be2 marked unhealthy; 300 new connections were served by: map["), lines[8])
	after := spread(lines[8])
	assert.NotContains(t, after, "be2", "connections to the unhealthy be2")
	for _, be := range []string{"be1", "be3"} {
		assert.InDelta(t, 150, after[be], 40, "%s: %q", be, lines[8])
	}
	assert.Equal(t, "", lines[9])

	m = regexp.MustCompile(`^XDP counters: forwarded (\d+), passed \d+, dropped 0 \(no backend 0\); connection table hits \d+, misses \d+$`).FindStringSubmatch(lines[10])
	require.NotNil(t, m, "XDP counters %q", lines[10])
	forwarded, _ := strconv.Atoi(m[1])
	assert.GreaterOrEqual(t, forwarded, 600*3, "at least three packets (SYN, request, ACKs) per connection forwarded")
	for i, want := range []string{"up=true  in-ring=true ", "up=false in-ring=false", "up=true  in-ring=true "} {
		assert.Regexp(t, `^  198\.18\.0\.`+strconv.Itoa(3+i)+`:80 +([0-9a-f]{2}:){5}[0-9a-f]{2} `+regexp.QuoteMeta(want)+` +[1-9]\d* packets +[1-9]\d* bytes$`, lines[11+i])
	}
}
