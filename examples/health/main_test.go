package main

import (
	"bytes"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	stampRE   = regexp.MustCompile(`^ ?(\d+\.\d\d)s (.*)$`)
	trafficRE = regexp.MustCompile(`^traffic alpha (\d+) ok( \d+ failed)?, bravo (\d+) ok( \d+ failed)?, charlie (\d+) ok( \d+ failed)?$`)
)

// phase is what the example printed between two script steps: its event
// and ready lines, and the traffic line that closes it.
type phase struct {
	events, ready []string
	traffic       []string // trafficRE's submatches
}

// TestRun runs the example and checks what it prints. Timestamps, request
// counts, the order of the first verdicts and the weights of a slow start
// in progress vary; the test checks the rest exactly: each step of the
// script causes its one event and no other, in order (bravo's ejection,
// its recovery, charlie's drain, charlie's return at weight 50); the
// ready set follows; no request goes to bravo from its death until its
// recovery, none to charlie while it drains, and the only failed requests
// are bravo's before its ejection; slow starts end at the configured
// weights.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the example runs for about two seconds")
	}
	var out bytes.Buffer
	require.NoError(t, run(&out))
	text := out.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	require.Greater(t, len(lines), 4, text)

	// Stamped lines, in time order, then the three status lines.
	status := lines[len(lines)-3:]
	stamped := lines[:len(lines)-3]
	var body []string
	prev := 0.0
	for _, line := range stamped {
		m := stampRE.FindStringSubmatch(line)
		require.NotNil(t, m, "unstamped line %q in:\n%s", line, text)
		at, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, at, prev, "time goes backwards at %q", line)
		prev = at
		body = append(body, m[2])
	}
	assert.Equal(t, []string{
		"        alpha   state=healthy probe=healthy agent=up weight=0",
		"        bravo   state=healthy probe=healthy agent=up weight=0",
		"        charlie state=healthy probe=healthy agent=up weight=50",
	}, status)

	// Split into phases at the script lines.
	var steps []string
	var phases []phase
	cur := phase{}
	for _, line := range body[:len(body)-2] {
		switch {
		case strings.HasPrefix(line, "event   "):
			cur.events = append(cur.events, strings.TrimPrefix(line, "event   "))
		case strings.HasPrefix(line, "ready   "):
			cur.ready = append(cur.ready, strings.TrimPrefix(line, "ready   "))
		case strings.HasPrefix(line, "traffic "):
			cur.traffic = trafficRE.FindStringSubmatch(line)
			require.NotNil(t, cur.traffic, "traffic line %q", line)
			phases = append(phases, cur)
			cur = phase{}
		case strings.HasPrefix(line, "script  "):
			require.NotNil(t, phases, "a script step before the first traffic line")
			steps = append(steps, strings.TrimPrefix(line, "script  "))
		default:
			t.Fatalf("unexpected line %q in:\n%s", line, text)
		}
	}
	require.Equal(t, []string{
		"killing bravo",
		"restarting bravo",
		"charlie's agent says drain",
		"charlie's agent says ready 50%",
		"waiting for the slow starts to end",
	}, steps, text)
	require.Len(t, phases, len(steps)+1, text)
	require.Empty(t, cur, "lines after the last traffic line")

	// Before the script: each backend added, then judged healthy by its
	// first probe; the ready set grows to all three at full weight.
	first := phases[0]
	assert.Equal(t, "[]", first.ready[0], "the ready set before the first verdicts")
	assert.Equal(t, "[alpha(100) bravo(100) charlie(100)]", first.ready[len(first.ready)-1])
	assert.Len(t, first.events, 6, "first events: %q", first.events)
	for _, name := range []string{"alpha", "bravo", "charlie"} {
		added := slices.Index(first.events, pad(name)+" unknown -> unknown (added)")
		healthy := slices.Index(first.events, pad(name)+" unknown -> healthy (probe)")
		assert.True(t, added >= 0 && healthy > added, "%s: added at %d, healthy at %d in %q", name, added, healthy, first.events)
	}

	// Each step: the one event it causes and the ready set it leads to,
	// with the weights of members still in a slow start replaced by W.
	for i, want := range []struct {
		event   *regexp.Regexp
		ready   string
		ramping []string
	}{
		{regexp.MustCompile(`^bravo   healthy -> unhealthy \((probe|passive: consecutive failures)\): .*connection refused$`),
			"[alpha(100) charlie(100)]", nil},
		{regexp.MustCompile(`^bravo   unhealthy -> healthy \(probe\)$`),
			"[alpha(100) bravo(W) charlie(100)]", []string{"bravo"}},
		{regexp.MustCompile(`^charlie healthy -> draining \(agent\)$`),
			"[alpha(100) bravo(W)]", []string{"bravo"}},
		{regexp.MustCompile(`^charlie draining -> healthy \(agent\) weight=50$`),
			"[alpha(100) bravo(W) charlie(W)]", []string{"bravo", "charlie"}},
	} {
		p := phases[1+i]
		if assert.Len(t, p.events, 1, "events after %q", steps[i]) {
			assert.Regexp(t, want.event, p.events[0], "event after %q", steps[i])
		}
		if assert.Len(t, p.ready, 1, "ready sets after %q", steps[i]) {
			ready := p.ready[0]
			for _, name := range want.ramping {
				ready = regexp.MustCompile(name+`\(\d+\)`).ReplaceAllString(ready, name+"(W)")
			}
			assert.Equal(t, want.ready, ready, "ready set after %q", steps[i])
		}
	}
	last := phases[len(phases)-1]
	assert.Empty(t, last.events, "events while the slow starts end")
	assert.Empty(t, last.ready, "ready-set changes while the slow starts end")
	assert.Equal(t, "ready   [alpha(100) bravo(100) charlie(50)]", body[len(body)-2], "the ready set at the end")

	// Traffic: where the requests of each phase went.
	n := func(s string) int {
		v, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(s, " "), " failed"))
		require.NoError(t, err, "number %q", s)
		return v
	}
	sent, failed := 0, 0
	for i, p := range phases {
		tr := p.traffic
		for _, j := range []int{1, 3, 5} {
			sent += n(tr[j])
			if tr[j+1] != "" {
				sent += n(tr[j+1])
				failed += n(tr[j+1])
			}
		}
		if i != 1 { // only bravo, between its death and its ejection
			assert.Equal(t, "", tr[2]+tr[4]+tr[6], "failed requests in phase %d: %q", i, tr[0])
		}
	}
	killed, restarted, drained := phases[1].traffic, phases[2].traffic, phases[4].traffic
	assert.Equal(t, "", killed[2]+killed[6], "failures outside bravo after its death: %q", killed[0])
	assert.Equal(t, "0", killed[3], "bravo served after its death: %q", killed[0])
	// The checker changes the pool before it publishes the event that
	// ends a phase, so one 5 ms tick can send a request in between: to
	// bravo once it is back, to charlie once its drain ended.
	assert.LessOrEqual(t, n(restarted[3]), 1, "bravo got requests while ejected: %q", restarted[0])
	assert.LessOrEqual(t, n(drained[5]), 1, "charlie got requests while draining: %q", drained[0])
	assert.Positive(t, n(last.traffic[3]), "bravo got no requests after its slow start: %q", last.traffic[0])

	assert.Equal(t, "done    "+strconv.Itoa(sent)+" requests, "+strconv.Itoa(failed)+" failed (sent to bravo between its death and its ejection)",
		body[len(body)-1])
}

// pad pads a backend name as the example's columns do.
func pad(name string) string { return name + strings.Repeat(" ", 7-len(name)) }
