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
// source port, so the test checks the spread within bounds (weights
// 1:1:2, then backend3 out), and exactly: the client's address reaches
// the backends unchanged (NAT, no SNAT), the unhealthy backend gets no
// new connection and no slot, the kernel's per-backend flow counters
// match the connections each backend served, and the slots add up to the
// table.
func TestRun(t *testing.T) {
	netlab.RequireRoot(t)
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 9, out.String())

	assert.Equal(t, "service web on 198.19.0.10:80/tcp, gateway mode, backends weighted 1:1:2", lines[0])
	spreadRE := regexp.MustCompile(`^  (\d+) new connections: backend1 (\d+), backend2 (\d+), backend3 (\d+) \(backends see the client as 198\.18\.1\.2\)$`)
	spread := func(line string, n int) [3]int {
		t.Helper()
		m := spreadRE.FindStringSubmatch(line)
		require.NotNil(t, m, "spread line %q", line)
		require.Equal(t, strconv.Itoa(n), m[1])
		var c [3]int
		for i := range c {
			c[i], _ = strconv.Atoi(m[2+i])
		}
		require.Equal(t, n, c[0]+c[1]+c[2], "connections served: %q", line)
		return c
	}
	// Binomial spreads: 400 × ¼ has σ ≈ 8.7, 400 × ½ σ = 10, 200 × ½
	// σ ≈ 7.1; the bounds are 4σ or more wide, and backend3's catches
	// weights ignored (133 expected) nearly always.
	before := spread(lines[1], 400)
	assert.InDelta(t, 100, before[0], 35, "backend1, weight 1 of 4")
	assert.InDelta(t, 100, before[1], 35, "backend2, weight 1 of 4")
	assert.InDelta(t, 200, before[2], 40, "backend3, weight 2 of 4")
	assert.Equal(t, "backend3 marked unhealthy (one nftables batch):", lines[2])
	after := spread(lines[3], 200)
	assert.InDelta(t, 100, after[0], 30, "backend1, weight 1 of 2")
	assert.InDelta(t, 100, after[1], 30, "backend2, weight 1 of 2")
	assert.Zero(t, after[2], "connections to the unhealthy backend3")

	m := regexp.MustCompile(`^kernel counters for web: 600 flows, (\d+) slots in the map$`).FindStringSubmatch(lines[4])
	require.NotNil(t, m, "kernel counters %q", lines[4])
	table, _ := strconv.Atoi(m[1])
	backendRE := regexp.MustCompile(`^  198\.18\.2\.(\d+):8080: (\d+) flows, (\d+) slots$`)
	var slots [3]int
	for i := range 3 {
		m := backendRE.FindStringSubmatch(lines[5+i])
		require.NotNil(t, m, "backend counters %q", lines[5+i])
		assert.Equal(t, strconv.Itoa(11+i), m[1], "backend order")
		assert.Equal(t, strconv.Itoa(before[i]+after[i]), m[2], "kernel flows of backend%d", i+1)
		slots[i], _ = strconv.Atoi(m[3])
	}
	assert.Equal(t, table, slots[0]+slots[1]+slots[2], "slots add up to the table")
	assert.Zero(t, slots[2], "slots of the unhealthy backend3")
	assert.InDelta(t, slots[0], slots[1], float64(table)/100, "backend1 and backend2 have equal weights")

	assert.Equal(t, "closed: the balancer's nftables table is gone", lines[8])
}
