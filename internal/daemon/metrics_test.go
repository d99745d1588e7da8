package daemon

import (
	"bytes"
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// The exposition passes promtool's lint, and the counters match the work
// recorded.
func TestMetricsPromtool(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}})
	require.NoError(t, pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("127.0.0.1:9101")},
		{Addr: netip.MustParseAddrPort("127.0.0.1:9102"), Weight: 3},
	}))
	ev := newLastEvents()
	m := newMetrics(func() []poolEntry { return []poolEntry{{"web", pool, ev}} })
	var first string // the member that failed
	for i := range 10 {
		ep, err := pool.Pick(balancer.PickInfo{})
		require.NoError(t, err)
		ep.Start()
		var fail error
		code := 200
		if i == 0 {
			fail, code = errors.New("upstream reset"), 502
			first = ep.Addr().String()
		}
		ep.Done(fail, time.Millisecond)
		m.Record(Outcome{Listener: "front", Pool: "web", Member: ep.Addr().String(), Code: code, Elapsed: time.Millisecond, Bytes: 100, Retries: i % 2})
	}
	m.Record(Outcome{Listener: "front", Pool: "web", Rejected: "no_backend", Code: 503})
	m.reloaded(true, 1, time.Now())
	m.reloaded(false, 1, time.Now())

	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	lines := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		lines[l] = true
	}
	other := "127.0.0.1:9101"
	if first == other {
		other = "127.0.0.1:9102"
	}
	for _, want := range []string{
		`lbkit_member_requests_total{member="127.0.0.1:9101",pool="web"} 5`,
		`lbkit_member_failures_total{member="` + first + `",pool="web"} 1`,
		`lbkit_pool_ready_members{pool="web"} 2`,
		`lbkit_member_weight{member="127.0.0.1:9102",pool="web"} 3`,
		`lbkit_responses_total{code="2xx",listener="front",member="` + other + `",pool="web"} 5`,
		`lbkit_responses_total{code="5xx",listener="front",member="` + first + `",pool="web"} 1`,
		`lbkit_retries_total{listener="front",pool="web"} 5`,
		`lbkit_rejections_total{listener="front",pool="web",reason="no_backend"} 1`,
		`lbkit_request_duration_seconds_count{listener="front",pool="web"} 11`,
		`lbkit_config_reloads_total{result="failure"} 1`,
		`lbkit_config_revision 1`,
	} {
		assert.True(t, lines[want], "metrics lack %s", want)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		requireTool(t, "promtool (Debian package prometheus)")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	assert.NoError(t, err, "promtool check metrics:\n%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "promtool found problems")
}
