package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the example and checks what it prints. Ports come from the
// kernel and round robin starts at a random backend, so the test checks
// structure: every request is redirected (302) to a backend's own address
// with its path and query kept, more than one backend gets the first
// four, each port always names the same backend, the backend taken down
// is ejected within a few probe intervals, and no redirect after the
// ejection names it, by address or by name.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 8, out.String())

	getRE := regexp.MustCompile(`^GET (\S+) +→ \[302 http://127\.0\.0\.1:([1-9]\d*)(\S+)\] → "(alpha|beta|gamma) served (\S+)"$`)
	names := map[string]string{} // port -> backend name
	get := func(line, path string) (port, name string) {
		t.Helper()
		m := getRE.FindStringSubmatch(line)
		require.NotNil(t, m, "line %q", line)
		assert.Equal(t, path, m[1], "requested path")
		assert.Equal(t, path, m[3], "path in the Location")
		assert.Equal(t, path, m[5], "path the backend served")
		port, name = m[2], m[4]
		if prev, ok := names[port]; ok {
			assert.Equal(t, prev, name, "port %s names two backends", port)
		}
		names[port] = name
		return port, name
	}
	for i, path := range []string{"/a", "/b?x=1", "/c", "/d"} {
		get(lines[i], path)
	}
	assert.GreaterOrEqual(t, len(names), 2, "four requests through round robin reached one backend:\n%s", out.String())

	m := regexp.MustCompile(`^backend (alpha|beta|gamma) \(127\.0\.0\.1:([1-9]\d*)\) is down; ejected after (\S+)$`).FindStringSubmatch(lines[4])
	require.NotNil(t, m, "ejection line %q", lines[4])
	downName, downPort := m[1], m[2]
	if prev, ok := names[downPort]; ok {
		assert.Equal(t, prev, downName, "the ejected backend's port")
	}
	took, err := time.ParseDuration(m[3])
	require.NoError(t, err)
	// One probe interval is 100 ms; allow ten for a loaded machine.
	assert.LessOrEqual(t, took, time.Second, "time to eject the dead backend")

	for i, path := range []string{"/e", "/f", "/g"} {
		port, name := get(lines[5+i], path)
		assert.NotEqual(t, downPort, port, "redirected to the ejected backend: %q", lines[5+i])
		assert.NotEqual(t, downName, name, "served by the ejected backend: %q", lines[5+i])
	}
}
