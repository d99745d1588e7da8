package discovery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"

	"github.com/lbkit/lbkit/internal/testlog"
)

// feed is a Source driven by the test: each step is reported to the
// sink, or ends Watch with its error.
type feed struct {
	name    string
	steps   chan feedStep
	started chan time.Time // the time of each Watch call
}

type feedStep struct {
	set  []balancer.Backend
	fail error // reported through Fail
	end  error // Watch returns it
}

func newFeed(name string) *feed {
	return &feed{name: name, steps: make(chan feedStep), started: make(chan time.Time, 16)}
}

func (f *feed) String() string { return f.name }

func (f *feed) Watch(ctx context.Context, sink Sink) error {
	f.started <- time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-f.steps:
			switch {
			case s.end != nil:
				return s.end
			case s.fail != nil:
				sink.Fail(s.fail)
			default:
				sink.Set(s.set)
			}
		}
	}
}

func bk(addr string, weight uint32) balancer.Backend {
	return balancer.Backend{Addr: ap(addr), Weight: weight}
}

// runSyncer starts s in the background and returns a function that stops
// it and checks that Run returned nil.
func runSyncer(t *testing.T, s *Syncer) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		cancel()
		require.NoError(t, <-done)
	}
}

func TestSyncMergesSources(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := newPool(t, "web")
		pool.Set([]balancer.Backend{bk("198.18.0.99:80", 1)})
		a, b := newFeed("a"), newFeed("b")
		var logs testlog.Buffer
		stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{a, b}, Logger: logs.Logger()})
		defer stop()

		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.99:80"}, members(pool), "no source reported yet: the pool is left alone")

		a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1), bk("198.18.0.2:80", 3)}}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.99:80"}, members(pool), "the first membership waits for every source's first answer")

		v := pool.Snapshot().Version
		b.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.2:80", 7), bk("198.18.0.3:80", 1)}}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80"}, members(pool), "union in source order, duplicates removed")
		assert.Equal(t, v+1, pool.Snapshot().Version, "the first membership is set at once")
		assert.Equal(t, uint32(3), pool.Endpoint(ap("198.18.0.2:80")).Backend().Weight, "the first source's member wins")

		v = pool.Snapshot().Version
		b.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.2:80", 7), bk("198.18.0.3:80", 0)}}
		synctest.Wait()
		assert.Equal(t, v, pool.Snapshot().Version, "an unchanged union does not touch the pool (weight 0 is 1)")

		b.steps <- feedStep{set: []balancer.Backend{}}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.1:80", "198.18.0.2:80"}, members(pool), "an empty set is an answer: b's members leave")
		assert.Contains(t, logs.String(), "pool=web")
		assert.Contains(t, logs.String(), "added=0 removed=1")
	})
}

func TestSyncInitialWait(t *testing.T) {
	t.Run("a silent source is waited for InitialWait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			pool := newPool(t, "web")
			a, b := newFeed("a"), newFeed("b")
			stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{a, b}, Logger: quiet, InitialWait: 3 * time.Second})
			defer stop()
			start := time.Now()
			a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1)}}
			waitMembers(t, pool, time.Minute, "198.18.0.1:80")
			assert.Equal(t, 3*time.Second, time.Since(start))

			b.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.2:80", 1)}}
			synctest.Wait()
			assert.Equal(t, []string{"198.18.0.1:80", "198.18.0.2:80"}, members(pool), "later reports apply at once")
		})
	})
	t.Run("a failure is an answer", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			pool := newPool(t, "web")
			a, b, c := newFeed("a"), newFeed("b"), newFeed("c")
			stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{a, b, c}, Logger: quiet})
			defer stop()
			a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1)}}
			b.steps <- feedStep{fail: errors.New("no answer")}
			c.steps <- feedStep{end: errors.New("cannot start")}
			synctest.Wait()
			assert.Equal(t, []string{"198.18.0.1:80"}, members(pool))
		})
	})
	t.Run("negative: no wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			pool := newPool(t, "web")
			a, b := newFeed("a"), newFeed("b")
			stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{a, b}, Logger: quiet, InitialWait: -1})
			defer stop()
			a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1)}}
			synctest.Wait()
			assert.Equal(t, []string{"198.18.0.1:80"}, members(pool))
		})
	})
}

func TestSyncFailureKeepsLastSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := newPool(t, "api")
		a := newFeed("feed-a")
		var logs testlog.Buffer
		s := &Syncer{Pool: pool, Sources: []Source{a}, Logger: logs.Logger()}
		assert.Nil(t, s.Status(), "nil before Run")
		stop := runSyncer(t, s)
		defer stop()

		a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1)}}
		synctest.Wait()
		updated := time.Now()
		time.Sleep(time.Second) // the bubble's clock
		a.steps <- feedStep{fail: errors.New("resolver on fire")}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.1:80"}, members(pool))
		assert.Regexp(t, `level=WARN msg="discovery: source failed; its last members stay" pool=api source=feed-a err="resolver on fire"`, logs.String())
		st := s.Status()
		require.Len(t, st, 1)
		assert.Equal(t, SourceStatus{Source: "feed-a", Reported: true, Members: 1, Updated: updated, Err: errors.New("resolver on fire")}, st[0])

		a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.2:80", 1)}}
		synctest.Wait()
		assert.Equal(t, []string{"198.18.0.2:80"}, members(pool))
		assert.Contains(t, logs.String(), `msg="discovery: source recovered" pool=api source=feed-a`)
		assert.NoError(t, s.Status()[0].Err, "a set clears the failure")
	})
}

func TestSyncWatchesAgainAfterError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := newPool(t, "web")
		a := newFeed("a")
		stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{a}, Logger: quiet, RetryMin: time.Second, RetryMax: 3 * time.Second})
		defer stop()

		<-a.started
		a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.1:80", 1)}}
		var gaps []time.Duration
		for range 4 {
			a.steps <- feedStep{end: errors.New("gone")}
			ended := time.Now()
			gaps = append(gaps, (<-a.started).Sub(ended))
		}
		assert.Equal(t, []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}, gaps, "the delay doubles up to RetryMax")
		assert.Equal(t, []string{"198.18.0.1:80"}, members(pool), "the stopped source's members stay")

		a.steps <- feedStep{set: []balancer.Backend{bk("198.18.0.2:80", 1)}}
		a.steps <- feedStep{end: errors.New("gone again")}
		ended := time.Now()
		assert.Equal(t, time.Second, (<-a.started).Sub(ended), "a watch that reported a set starts the delay over")
	})
}

func TestSyncValidates(t *testing.T) {
	pool := newPool(t, "web")
	for _, s := range []*Syncer{{}, {Pool: pool}, {Pool: pool, Sources: []Source{nil}}} {
		err := s.Run(t.Context())
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "discovery: "), err.Error())
	}
}
