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
	re := regexp.MustCompile(`^\s*(\S+)\s+([0-9.]+)%\s+\S+\s+\d+\s+\S+\s+\S+\s+([0-9/]+)\s+(?:[0-9.]+|-)\s+(?:\S+ %|-)\s*$`)
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

// TestDemoSmall runs every strategy over the default kind of backend at a
// load it takes: no request lost, every backend of a balanced strategy
// busy, and direct sending everything to backend 1. The service time is
// short and the clients patient (30 s): a loss here is a bug, not a slow
// moment of a shared machine under -race (at the default 1.5 s and 10 ms,
// 2 of 10 runs lost requests under a load average of 15).
func TestDemoSmall(t *testing.T) {
	out, errOut, code := runDemoCmd(t, "-requests", "600", "-concurrency", "50", "-backends", "3",
		"-service", "1ms", "-timeout", "30s")
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
		if s.name == "direct" {
			assert.Equal(t, []int{600, 0, 0}, r.perBack, "direct is one backend alone:\n%s", out)
			continue
		}
		for i, c := range r.perBack {
			assert.Positive(t, c, "%s: backend %d received no work:\n%s", s.name, i+1, out)
		}
	}
	assert.Contains(t, out, "gunicorn (gunicorn with sync workers): 5 workers, service time 1ms mean")
	assert.Contains(t, out, "write-up (one server alone, 10,000 requests at 1,000 concurrency): dev server 14 %")
}

// TestDemoShowsThePoint is the default run's claim at a small scale: one
// backend alone cannot keep up with the clients and loses requests (the
// demo still exits 0: that is the baseline), while every balancer
// spreading the same load over 20 such backends loses none. One backend
// serves one request at a time, 30 ms each, so the last of 200 clients
// waits about 6 s for it, past the clients' patience (5 s): however fast
// the machine, some of them give up. Twenty keep the wait near 0.3 s,
// so a balanced row loses a request only if the machine slows down more
// than tenfold.
func TestDemoShowsThePoint(t *testing.T) {
	out, errOut, code := runDemoCmd(t, "-requests", "250", "-concurrency", "200", "-backends", "20",
		"-workers", "1", "-service", "30ms", "-timeout", "5s", "-only", "direct,redirect,dns,http-proxy,tcp-proxy")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	rows := parseTable(t, out)
	require.Len(t, rows, 5, out)
	assert.Less(t, rows["direct"].success, 100.0, "one backend alone kept up:\n%s", out)
	assert.Contains(t, out, "~90 %", "the write-up's figure for gunicorn is printed beside direct:\n%s", out)
	for name, r := range rows {
		if name != "direct" {
			assert.Equal(t, 100.0, r.success, "%s lost requests:\n%s", name, out)
		}
	}
}

func TestDemoKillBackend(t *testing.T) {
	out, errOut, code := runDemoCmd(t, "-requests", "1000", "-concurrency", "20", "-kill-backend", "-service", "1ms", "-timeout", "30s")
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
	_, errOut, code = runDemoCmd(t, "-backend", "nope")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, `unknown backend "nope" (one of devserver, uwsgi, gunicorn, gevent)`)
	_, errOut, code = runDemoCmd(t, "-workers", "-1")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "cannot be negative")
	_, errOut, code = runDemoCmd(t, "-only", "nope")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `unknown strategy "nope"`)
	var stdout, stderr bytes.Buffer
	assert.Equal(t, 2, run(context.Background(), []string{"frobnicate"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "unknown command")
}
