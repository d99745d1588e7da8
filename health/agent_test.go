package health

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAgent(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Report
		wantErr string
	}{
		{in: "", want: Report{}},
		{in: "up", want: Report{Agent: AgentUp}},
		{in: "READY", want: Report{Agent: AgentUp}},
		{in: "drain", want: Report{Agent: AgentDrain}},
		{in: "maint", want: Report{Agent: AgentMaint}},
		{in: "down", want: Report{Agent: AgentDown}},
		{in: "fail", want: Report{Agent: AgentDown}},
		{in: "stopped", want: Report{Agent: AgentDown}},
		{in: "75%", want: Report{HasWeight: true, Weight: 75, WeightPercent: true}},
		{in: "weight=10", want: Report{HasWeight: true, Weight: 10}},
		{in: "Weight=150%", want: Report{HasWeight: true, Weight: 150, WeightPercent: true}},
		{in: "42", want: Report{HasWeight: true, Weight: 42}},
		{in: "0%", want: Report{HasWeight: true, Weight: 0, WeightPercent: true}},
		{in: "up 50% maxconn:30", want: Report{Agent: AgentUp, HasWeight: true, Weight: 50, WeightPercent: true}},
		{in: "drain,\tready", want: Report{Agent: AgentUp}}, // last state word wins
		{in: "  drain  ", want: Report{Agent: AgentDrain}},
		{in: "down # disk full, back soon", want: Report{Agent: AgentDown}},
		{in: "up\r\n", want: Report{Agent: AgentUp}},
		{in: "drain\nup", want: Report{Agent: AgentDrain}}, // first line only
		{in: "up sideways", want: Report{Agent: AgentUp}, wantErr: `"sideways"`},
		{in: "weight=", want: Report{}, wantErr: `"weight="`},
		{in: "%", want: Report{}, wantErr: `"%"`},
		{in: "-5%", want: Report{}, wantErr: `"-5%"`},
		{in: "+5", want: Report{}, wantErr: `"+5"`},
		{in: "99999999999%", want: Report{}, wantErr: "99999999999%"},
		{in: "maxconn:x drain", want: Report{Agent: AgentDrain}, wantErr: "maxconn:x"},
	} {
		t.Run(strconv.Quote(tc.in), func(t *testing.T) {
			got, err := ParseAgent(tc.in)
			assert.Equal(t, tc.want, got)
			if tc.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.wantErr)
			}
		})
	}
}

func TestParseAgentAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { _, _ = ParseAgent("ready 75% maxconn:30 # fine") })
	assert.Zero(t, allocs)
}

// format writes r back in agent words.
func format(r Report) string {
	var words []string
	if r.Agent != AgentNone {
		words = append(words, r.Agent.String())
	}
	if r.HasWeight {
		w := strconv.FormatUint(uint64(r.Weight), 10)
		if r.WeightPercent {
			w += "%"
		}
		words = append(words, "weight="+w)
	}
	return strings.Join(words, " ")
}

// FuzzParseAgent checks that ParseAgent never panics and that what it
// understood survives a round trip through its own words.
func FuzzParseAgent(f *testing.F) {
	for _, seed := range []string{
		"up", "ready 75%", "drain", "maint # planned", "down,fail", // the HAProxy words
		"weight=10", "weight=150%", "maxconn:30 up", "0%", // weights
		"%", "weight=", "-1", "up\r\ndown", "\xff\xfe", // malformed
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseAgent(s)
		if err != nil && !utf8.ValidString(err.Error()) {
			// %q keeps error text valid UTF-8 whatever the input.
			t.Fatalf("invalid error text %q", err.Error())
		}
		again, err := ParseAgent(format(r))
		if err != nil || again != r {
			t.Fatalf("ParseAgent(%q) = %+v; its words %q parse as %+v, %v", s, r, format(r), again, err)
		}
	})
}
