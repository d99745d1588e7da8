package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// row is one parsed line of the demo's table.
type row struct {
	success float64
	perBack []int
}

func parseTable(t *testing.T, out string) map[string]row {
	t.Helper()
	rows := map[string]row{}
	re := regexp.MustCompile(`^\s*(\S+)\s+([0-9.]+)%\s+\S+\s+\d+\s+\S+\s+\S+\s+([0-9/]+)\s+[0-9.]+\s*$`)
	for _, line := range strings.Split(out, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pct, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		var counts []int
		for _, c := range strings.Split(m[3], "/") {
			n, err := strconv.Atoi(c)
			require.NoError(t, err)
			counts = append(counts, n)
		}
		rows[m[1]] = row{success: pct, perBack: counts}
	}
	return rows
}

func runDemoCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"demo", "-progress=false"}, args...), &stdout, &stderr)
	return stdout.String(), stderr.String(), code
}

func TestDemoSmall(t *testing.T) {
	out, errOut, code := runDemoCmd(t, "-requests", "600", "-concurrency", "50")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	rows := parseTable(t, out)
	for _, s := range strategies() {
		if strings.Contains(out, "skipped "+s.name+":") {
			continue
		}
		r, ok := rows[s.name]
		require.True(t, ok, "no row for %s in:\n%s", s.name, out)
		assert.Equal(t, 100.0, r.success, "%s lost requests:\n%s", s.name, out)
		require.Len(t, r.perBack, 3)
		for i, c := range r.perBack {
			assert.Positive(t, c, "%s: backend %d received no work:\n%s", s.name, i+1, out)
		}
	}
}

func TestDemoKillBackend(t *testing.T) {
	out, errOut, code := runDemoCmd(t, "-requests", "1000", "-concurrency", "20", "-kill-backend")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	rows := parseTable(t, out)
	for name, r := range rows {
		if name == "direct" {
			continue // no balancer: requests to the dead backend fail by design
		}
		assert.Equal(t, 100.0, r.success, "%s lost requests after a backend was killed:\n%s", name, out)
	}
}

func TestDemoFlags(t *testing.T) {
	_, errOut, code := runDemoCmd(t, "-backends", "0")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "-backends")
	_, errOut, code = runDemoCmd(t, "-only", "nope")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `unknown strategy "nope"`)
	var stdout, stderr bytes.Buffer
	assert.Equal(t, 2, run(context.Background(), []string{"frobnicate"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "unknown command")
}
