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

// answer formats the A answer naming addrs (last octets) with a 30 s TTL,
// as the example prints it.
func answer(octets ...int) string {
	var parts []string
	for _, o := range octets {
		parts = append(parts, fmt.Sprintf("198.18.0.%d (ttl 30)", o))
	}
	return strings.Join(parts, ", ")
}

// TestRun runs the example and checks what it prints. Three parts vary
// from run to run and are checked by their structure before the whole
// output is compared: the server's port (the kernel's choice), the
// rotation's starting point (random per socket, so each answer must be
// the previous one rotated by one), and the weighted round robin's counts
// (exactly 100/100/400 when the pick counter stays put; within a few
// picks when the runtime moves the serving goroutine's stack and with it
// the counter shard).
func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out))
	lines := strings.Split(out.String(), "\n")
	require.Len(t, lines, 22, out.String())

	require.Regexp(t, `^serving example\.test\. on 127\.0\.0\.1:[1-9]\d* \(UDP and TCP\)$`, lines[0])
	lines[0] = "serving example.test. on 127.0.0.1:PORT (UDP and TCP)"

	// Rotation: lines 3-5 each name all three backends, starting one
	// further each time.
	const www = "www.example.test.      A     NOERROR  aa=true  "
	first, ok := strings.CutPrefix(lines[3], www+"198.18.0.")
	require.True(t, ok, "first answer: %q", lines[3])
	start, err := strconv.Atoi(first[:1])
	require.NoError(t, err, "first answer: %q", lines[3])
	require.Contains(t, []int{1, 2, 3}, start)
	for k := range 3 {
		var want []int
		for i := range 3 {
			want = append(want, (start-1+k+i)%3+1)
		}
		require.Equal(t, www+answer(want...), lines[3+k], "answer %d of the rotation", k+1)
		lines[3+k] = "ROTATION"
	}

	// Weighted round robin: 198.18.0.3 gets four picks in six.
	countRE := regexp.MustCompile(`^  198\.18\.0\.(\d): (\d+) of 600$`)
	want := map[string]int{"1": 100, "2": 100, "3": 400}
	for i := 8; i <= 10; i++ {
		m := countRE.FindStringSubmatch(lines[i])
		require.NotNil(t, m, "count line %q", lines[i])
		n, _ := strconv.Atoi(m[2])
		assert.InDelta(t, want[m[1]], n, 12, "picks of 198.18.0.%s", m[1])
		lines[i] = "  198.18.0." + m[1] + ": COUNT"
	}

	// After 198.18.0.2 fails, the answer names the two others, in either
	// order (the rotation goes on).
	require.Contains(t, []string{www + answer(1, 3), www + answer(3, 1)}, lines[13])
	lines[13] = "ANSWER WITHOUT 198.18.0.2"

	assert.Equal(t, `serving example.test. on 127.0.0.1:PORT (UDP and TCP)

all ready backends, rotated per query:
ROTATION
ROTATION
ROTATION

one address picked by the pool's weighted round robin (198.18.0.3 has weight 4 of 6):
  198.18.0.1: COUNT
  198.18.0.2: COUNT
  198.18.0.3: COUNT

198.18.0.2 fails its health check:
ANSWER WITHOUT 198.18.0.2

negative answers and names outside the zone:
www.example.test.      AAAA  NOERROR  aa=true  
nope.example.test.     A     NXDOMAIN aa=true  
example.org.           A     REFUSED  aa=false 

served 607 queries, sent 607 responses
`, strings.Join(lines, "\n"))
}
