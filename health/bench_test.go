package health

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// benchChecker returns a checker with n passive-only targets and the
// targets' addresses. With window, every passive rule is on (a CAS on a
// shared window bucket per outcome); without, the defaults (consecutive
// failures only).
func benchChecker(b *testing.B, n int, window bool) (*Checker, []netip.AddrPort) {
	cfg := Config{Logger: quiet}
	if window {
		cfg.Passive = PassiveConfig{FailureRate: 0.9, LatencyThreshold: time.Second, MaxEjectedPercent: 100}
	}
	c, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	addrs := make([]netip.AddrPort, n)
	for i := range addrs {
		addrs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80)
		if err := c.SetTarget(Target{Addr: addrs[i]}); err != nil {
			b.Fatal(err)
		}
	}
	return c, addrs
}

var benchCases = []struct {
	name    string
	targets int
	window  bool
}{
	{"targets=1/rules=default", 1, false},
	{"targets=1/rules=all", 1, true},
	{"targets=100/rules=default", 100, false},
	{"targets=100/rules=all", 100, true},
}

// BenchmarkObserve reports successes with a latency (the common case)
// from one goroutine.
func BenchmarkObserve(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			c, addrs := benchChecker(b, bc.targets, bc.window)
			o := Outcome{Latency: 3 * time.Millisecond}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				c.Observe(addrs[i%len(addrs)], o)
				i++
			}
		})
	}
}

// BenchmarkObserveParallel reports from every P at once; with one target
// every goroutine hits the same counters (the worst case).
func BenchmarkObserveParallel(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			c, addrs := benchChecker(b, bc.targets, bc.window)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				o := Outcome{Latency: 3 * time.Millisecond}
				i := 0
				for pb.Next() {
					c.Observe(addrs[i%len(addrs)], o)
					i++
				}
			})
		})
	}
}

// mutexObserver is the baseline the Observe path is measured against: the
// obvious passive counter, a mutex around a map of per-target counts that
// reads the clock for every outcome.
type mutexObserver struct {
	mu     sync.Mutex
	counts map[netip.AddrPort]*mutexCounts
}

type mutexCounts struct {
	consecutive, total, failed int
	last                       time.Time
}

func (m *mutexObserver) Observe(a netip.AddrPort, o Outcome) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.counts[a]
	if c == nil {
		return
	}
	c.total++
	c.last = time.Now()
	if o.Failed {
		c.failed++
		c.consecutive++
	} else {
		c.consecutive = 0
	}
}

// BenchmarkObserveBaseline runs BenchmarkObserveParallel's load against
// mutexObserver, for the ratio.
func BenchmarkObserveBaseline(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(map[int]string{1: "targets=1", 100: "targets=100"}[n], func(b *testing.B) {
			m := &mutexObserver{counts: map[netip.AddrPort]*mutexCounts{}}
			addrs := make([]netip.AddrPort, n)
			for i := range addrs {
				addrs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80)
				m.counts[addrs[i]] = &mutexCounts{}
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				o := Outcome{Latency: 3 * time.Millisecond}
				i := 0
				for pb.Next() {
					m.Observe(addrs[i%len(addrs)], o)
					i++
				}
			})
		})
	}
}
