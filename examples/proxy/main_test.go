package main

import (
	"bytes"
	"fmt"
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
// structure: every request succeeds with the client's address forwarded;
// the six first spread over more than one backend; after beta dies it
// serves nothing although it was tried (the retries hide it), and every
// try is recorded as its failure but one on the keep-alive connection it
// closed (the example goes on until a failure is recorded); the sticky
// cookie is set and keeps the client on the backend that served the
// login.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	// 1 + 6 + 1 + (4..12) + 1 + 1 + 1 + 3
	require.GreaterOrEqual(t, len(lines), 18, out.String())
	require.LessOrEqual(t, len(lines), 26, out.String())

	require.Regexp(t, `^proxy on http://127\.0\.0\.1:[1-9]\d* in front of 3 backends$`, lines[0])
	served := func(line, names, path string) string {
		t.Helper()
		m := regexp.MustCompile(`^  200 (` + names + `) served ` + regexp.QuoteMeta(path) + ` for 127\.0\.0\.1$`).FindStringSubmatch(line)
		require.NotNil(t, m, "want a 200 from one of %s for %s, got %q", names, path, line)
		return m[1]
	}
	seen := map[string]bool{}
	for i := range 6 {
		seen[served(lines[1+i], "alpha|beta|gamma", fmt.Sprintf("/page/%d", i))] = true
	}
	assert.GreaterOrEqual(t, len(seen), 2, "six requests through round robin reached one backend:\n%s", out.String())

	require.Equal(t, "killing beta - GETs are retried on another backend:", lines[7])
	after := 0
	for ; strings.Contains(lines[8+after], "/after-kill/"); after++ {
		served(lines[8+after], "alpha|gamma", fmt.Sprintf("/after-kill/%d", after))
	}
	assert.GreaterOrEqual(t, after, 4, "requests after the kill")
	rest := lines[8+after:]
	require.Len(t, rest, 6, out.String())

	m := regexp.MustCompile(`^  beta: tried (\d+) times after it died, (\d+) failures recorded \(feed them to a health\.Checker to eject it\)$`).FindStringSubmatch(rest[0])
	require.NotNil(t, m, "beta's counters: %q", rest[0])
	tried, _ := strconv.Atoi(m[1])
	failed, _ := strconv.Atoi(m[2])
	assert.GreaterOrEqual(t, failed, 1, "a refused dial to beta was recorded")
	assert.LessOrEqual(t, failed, tried, "more failures than tries")
	assert.LessOrEqual(t, tried, failed+1, "tries not counted as failures: only the keep-alive connection beta closed is excused")

	assert.Equal(t, "sticky session: the cookie keeps a client on one backend", rest[1])
	lm := regexp.MustCompile(`^  200 (alpha|gamma) served /login for 127\.0\.0\.1; cookie lb set$`).FindStringSubmatch(rest[2])
	require.NotNil(t, lm, "login line: %q", rest[2])
	for _, line := range rest[3:] {
		assert.Equal(t, "  200 "+lm[1]+" served /cart for 127.0.0.1", line, "the cookie pins the login's backend")
	}
}
