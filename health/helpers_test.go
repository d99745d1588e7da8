package health

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

var errDown = errors.New("down")

// quiet is a logger that drops everything.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// addr returns 198.18.0.<i>:80.
func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 80)
}

// switchProbe is a ProberFunc whose verdict a test flips, and which
// counts its calls.
type switchProbe struct {
	fail  atomic.Bool
	calls atomic.Int64
	mu    sync.Mutex
	rep   Report
}

func (s *switchProbe) Probe(ctx context.Context, a netip.AddrPort) (Report, error) {
	s.calls.Add(1)
	s.mu.Lock()
	rep := s.rep
	s.mu.Unlock()
	if s.fail.Load() {
		return rep, errDown
	}
	return rep, nil
}

func (s *switchProbe) setReport(r Report) {
	s.mu.Lock()
	s.rep = r
	s.mu.Unlock()
}

// recorder collects events.
type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) add(e Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

func (r *recorder) take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	evs := r.evs
	r.evs = nil
	return evs
}

// newChecker returns a checker closed at the end of the test, with events
// recorded.
func newChecker(t *testing.T, cfg Config) (*Checker, *recorder) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	rec := &recorder{}
	c.Subscribe(rec.add)
	return c, rec
}

// transitions returns the (state, reason) of each event, for compact
// assertions.
type tr struct {
	State  State
	Reason string
}

func transitions(evs []Event) []tr {
	if len(evs) == 0 {
		return nil
	}
	out := make([]tr, len(evs))
	for i, e := range evs {
		out[i] = tr{e.State, e.Reason}
	}
	return out
}

// half is a Rand that always returns 0.5: first probes at half the
// interval and no jitter.
func half() float64 { return 0.5 }

// step advances the bubble's fake clock by d and waits for every
// goroutine to settle.
func step(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}
