package discovery

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
)

// quiet is a logger that drops everything.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newPool(t *testing.T, name string) *balancer.Pool {
	t.Helper()
	p, err := balancer.New(balancer.Config{Name: name, Builder: roundrobin.Builder{}, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// members returns the pool's member addresses in order.
func members(p *balancer.Pool) []string {
	var out []string
	for _, ep := range p.Snapshot().Members {
		out = append(out, ep.Addr().String())
	}
	return out
}

// ready returns the pool's ready addresses, sorted.
func ready(p *balancer.Pool) []string {
	var out []string
	for _, w := range p.Snapshot().Ready {
		out = append(out, w.Endpoint.Addr().String())
	}
	slices.Sort(out)
	return out
}

// waitFor waits until cond holds for the pool, woken by each snapshot it
// publishes, and fails the test after timeout. It returns how long it
// waited.
func waitFor(t *testing.T, p *balancer.Pool, timeout time.Duration, what string, cond func(*balancer.Pool) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s := p.Snapshot()
		if cond(p) {
			return time.Since(start)
		}
		select {
		case <-s.Changed():
		case <-deadline.C:
			t.Fatalf("after %v: %s; members %v, ready %v", timeout, what, members(p), ready(p))
		}
	}
}

// waitMembers waits until the pool's members are want, in order.
func waitMembers(t *testing.T, p *balancer.Pool, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	return waitFor(t, p, timeout, fmt.Sprint("want members ", want), func(p *balancer.Pool) bool {
		return slices.Equal(members(p), want)
	})
}

// recSink is a Sink that hands each call to the test on a channel.
type recSink struct {
	sets chan []balancer.Backend
	errs chan error
	ctx  context.Context
}

func newRecSink(ctx context.Context) *recSink {
	return &recSink{sets: make(chan []balancer.Backend, 64), errs: make(chan error, 64), ctx: ctx}
}

func (r *recSink) Set(b []balancer.Backend) {
	select {
	case r.sets <- b:
	case <-r.ctx.Done():
	}
}

func (r *recSink) Fail(err error) {
	select {
	case r.errs <- err:
	case <-r.ctx.Done():
	}
}

// nextSet returns the next set reported, failing after timeout.
func (r *recSink) nextSet(t *testing.T, timeout time.Duration) []balancer.Backend {
	t.Helper()
	select {
	case s := <-r.sets:
		return s
	case <-time.After(timeout):
		t.Fatalf("no set reported within %v", timeout)
		return nil
	}
}

// nextErr returns the next failure reported, failing after timeout.
func (r *recSink) nextErr(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-r.errs:
		return err
	case <-time.After(timeout):
		t.Fatalf("no failure reported within %v", timeout)
		return nil
	}
}

// addrsOf returns the addresses of bs as strings.
func addrsOf(bs []balancer.Backend) []string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.Addr.String())
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
