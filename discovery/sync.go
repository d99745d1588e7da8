package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/lbkit/lbkit/balancer"
)

// Source finds the members of a pool: host names, DNS records, a file, a
// key prefix in etcd. Each source in this package and in discovery/etcd
// implements it; a program can add its own.
type Source interface {
	// Watch reports the source's members to sink until ctx ends, then
	// returns nil. It calls sink.Set with the complete current set each
	// time it learns it (on a change, and may also when nothing changed),
	// and sink.Fail when it could not learn it: the last set reported
	// stays in force, so a failing source never empties a pool. Watch
	// returns an error only when it cannot go on (a directory that is
	// gone, a closed client); the caller may call it again later, and it
	// then reports the complete set again. Watch blocks; it calls sink
	// from the goroutine that called Watch.
	Watch(ctx context.Context, sink Sink) error
}

// Sink receives what a Source learns. A Syncer gives each source its
// own.
type Sink interface {
	// Set replaces the source's members with backends. The sink keeps
	// backends: the source must not modify it afterwards. An empty set is
	// a real answer (every member is gone), not a failure.
	Set(backends []balancer.Backend)
	// Fail reports that the source could not learn its members; the last
	// set stays. A source that learned part of its members (one host name
	// of three did not resolve) calls Set with what it has (keeping the
	// last addresses of the failed part) and then Fail.
	Fail(err error)
}

// Defaults of a Syncer.
const (
	DefaultRetryMin    = time.Second
	DefaultRetryMax    = 30 * time.Second
	DefaultInitialWait = 5 * time.Second
)

// Syncer keeps a pool's membership equal to the union of its sources'
// members. It is the only writer of the pool's membership: every change
// goes through balancer.Pool.Set, so a health checker that follows the
// pool (health.Checker.Follow), slow start and every front-end serving
// from the pool follow discovery with no other call.
//
// The zero value is not usable: set Pool and Sources, then call Run.
type Syncer struct {
	// Pool receives the members. Required.
	Pool *balancer.Pool
	// Sources are merged in order: when two report the same address, the
	// first source's member (weight, zone, meta) wins. At least one.
	Sources []Source
	// Logger receives membership changes at info level and source
	// failures at warn level, each line with pool=Pool.Name() and
	// source=the source's String() (or its index). Nil means
	// slog.Default().
	Logger *slog.Logger
	// RetryMin and RetryMax bound the delay before a source whose Watch
	// returned an error is watched again; the delay doubles at each
	// error in a row. Zero means DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// InitialWait bounds how long Run waits for every source's first
	// answer (a set or a failure) before it sets the pool's first
	// membership, so that the first membership is the union of all
	// sources and members of a slower source do not join late (and
	// slow-start, in a pool with slow start). After the first
	// membership, every report applies at once. Zero means
	// DefaultInitialWait; negative means no wait.
	InitialWait time.Duration

	mu     sync.Mutex
	status []SourceStatus
}

// SourceStatus is what a Syncer knows of one of its sources, for status
// pages and health endpoints.
type SourceStatus struct {
	// Source names the source (its String method, or its index).
	Source string
	// Reported tells whether the source has reported a set since Run
	// started; Members is the size of its last set and Updated when it
	// came.
	Reported bool
	Members  int
	Updated  time.Time
	// Err is the source's last failure after its last set, or nil: a
	// source that fails keeps its last set in the pool.
	Err error
}

// Status returns the state of each source, in the order of Sources;
// nil before Run. It is safe to call while Run runs.
func (s *Syncer) Status() []SourceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.status)
}

// note updates the status of source i.
func (s *Syncer) note(i int, f func(*SourceStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status[i])
}

// Sync runs a Syncer for pool with sources and slog.Default() until ctx
// ends. See Syncer.Run.
func Sync(ctx context.Context, pool *balancer.Pool, sources ...Source) error {
	return (&Syncer{Pool: pool, Sources: sources}).Run(ctx)
}

// report is one Set (or, with failed, one failure) of source i.
type report struct {
	i      int
	set    []balancer.Backend
	failed bool
}

// Run watches every source and sets the pool's members to the union of
// the last set each source reported, with duplicate addresses removed.
// It sets the first membership once every source has answered (see
// InitialWait), leaves the pool alone while no source has reported a
// set, and calls Pool.Set only when the union changed. A source that fails keeps
// its last set; one whose Watch returns an error is watched again after
// a growing delay. Run blocks until ctx ends, then returns nil once
// every source's Watch has returned; it returns an error at once if the
// Syncer is not usable.
func (s *Syncer) Run(ctx context.Context) error {
	if s.Pool == nil {
		return errors.New("discovery: Syncer.Pool is required")
	}
	if len(s.Sources) == 0 {
		return errors.New("discovery: Syncer.Sources is empty")
	}
	for i, src := range s.Sources {
		if src == nil {
			return fmt.Errorf("discovery: Syncer.Sources[%d] is nil", i)
		}
	}
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("pool", s.Pool.Name())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.status = make([]SourceStatus, len(s.Sources))
	for i, src := range s.Sources {
		s.status[i].Source = sourceName(i, src)
	}
	s.mu.Unlock()

	reports := make(chan report)
	var wg sync.WaitGroup
	for i, src := range s.Sources {
		l := log.With("source", sourceName(i, src))
		wg.Go(func() { s.watch(ctx, i, src, reports, l) })
	}
	defer wg.Wait()

	sets := make([][]balancer.Backend, len(s.Sources))
	reported := make([]bool, len(s.Sources))
	answered := make([]bool, len(s.Sources))
	var applied []balancer.Backend
	first := true
	waiting := s.InitialWait >= 0 // for every source's first answer
	var initial <-chan time.Time
	if waiting {
		t := time.NewTimer(cmp.Or(s.InitialWait, DefaultInitialWait))
		defer t.Stop()
		initial = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-initial:
			waiting = false
		case r := <-reports:
			answered[r.i] = true
			if !r.failed {
				sets[r.i], reported[r.i] = r.set, true
			}
			if waiting && !slices.Contains(answered, false) {
				waiting = false
			}
		}
		if waiting || !slices.Contains(reported, true) {
			continue
		}
		merged := merge(sets, reported, log)
		if !first && sameMembers(applied, merged) {
			continue
		}
		if err := s.Pool.Set(merged); err != nil {
			log.Error("discovery: setting the pool's members failed", "err", err)
			continue
		}
		added, removed := diff(applied, merged)
		log.Info("discovery: members changed", "members", len(merged), "added", added, "removed", removed)
		applied, first = merged, false
	}
}

// watch runs src.Watch until ctx ends, again after a growing delay when
// it returns an error.
func (s *Syncer) watch(ctx context.Context, i int, src Source, reports chan<- report, log *slog.Logger) {
	lo, hi := s.RetryMin, s.RetryMax
	if lo <= 0 {
		lo = DefaultRetryMin
	}
	if hi <= 0 {
		hi = DefaultRetryMax
	}
	hi = max(hi, lo)
	delay := lo
	for {
		sk := &sink{s: s, ctx: ctx, i: i, reports: reports, log: log}
		err := src.Watch(ctx, sk)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.note(i, func(st *SourceStatus) { st.Err = err })
			select {
			case reports <- report{i: i, failed: true}:
			case <-ctx.Done():
				return
			}
		}
		if err == nil {
			log.Debug("discovery: source finished; its last members stay")
			return
		}
		if sk.sets > 0 {
			delay = lo
		}
		log.Warn("discovery: source stopped; its last members stay", "err", err, "retry", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, hi)
	}
}

// sink is what one Watch call of one source reports to.
type sink struct {
	s       *Syncer
	ctx     context.Context
	i       int
	reports chan<- report
	log     *slog.Logger
	sets    int
	failing bool
}

func (k *sink) Set(backends []balancer.Backend) {
	if k.failing {
		k.log.Info("discovery: source recovered")
		k.failing = false
	}
	k.sets++
	k.s.note(k.i, func(st *SourceStatus) {
		st.Reported, st.Members, st.Updated, st.Err = true, len(backends), time.Now(), nil
	})
	select {
	case k.reports <- report{i: k.i, set: backends}:
	case <-k.ctx.Done():
	}
}

func (k *sink) Fail(err error) {
	k.failing = true
	k.s.note(k.i, func(st *SourceStatus) { st.Err = err })
	k.log.Warn("discovery: source failed; its last members stay", "err", err)
	select {
	case k.reports <- report{i: k.i, failed: true}:
	case <-k.ctx.Done():
	}
}

// sourceName names a source in log lines: its String method, or its
// index.
func sourceName(i int, src Source) string {
	if s, ok := src.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("#%d", i)
}

// merge returns the union of the reported sets in source order, the
// first member of each address kept.
func merge(sets [][]balancer.Backend, reported []bool, log *slog.Logger) []balancer.Backend {
	n := 0
	for _, set := range sets {
		n += len(set)
	}
	out := make([]balancer.Backend, 0, n)
	seen := make(map[netip.AddrPort]struct{}, n)
	for i, set := range sets {
		if !reported[i] {
			continue
		}
		for _, b := range set {
			if _, dup := seen[b.Addr]; dup {
				log.Debug("discovery: duplicate member ignored", "addr", b.Addr, "source", i)
				continue
			}
			seen[b.Addr] = struct{}{}
			out = append(out, b)
		}
	}
	return out
}

// sameMembers reports whether a and b list the same members in the same
// order with the same weight, zone and meta.
func sameMembers(a, b []balancer.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameBackend(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sameBackend(a, b balancer.Backend) bool {
	return a.Addr == b.Addr && max(a.Weight, 1) == max(b.Weight, 1) && a.Zone == b.Zone && maps.Equal(a.Meta, b.Meta)
}

// diff counts the addresses of next missing from prev (added) and of
// prev missing from next (removed).
func diff(prev, next []balancer.Backend) (added, removed int) {
	in := make(map[netip.AddrPort]struct{}, len(prev))
	for _, b := range prev {
		in[b.Addr] = struct{}{}
	}
	for _, b := range next {
		if _, ok := in[b.Addr]; ok {
			delete(in, b.Addr)
		} else {
			added++
		}
	}
	return added, len(in)
}
