package health

import (
	"net/netip"
	"testing"
	"time"
)

// benchChecker returns a checker with n passive-only targets and every
// passive rule on, and the targets' addresses.
func benchChecker(b *testing.B, n int) (*Checker, []netip.AddrPort) {
	c, err := New(Config{Logger: quiet, Passive: PassiveConfig{
		FailureRate: 0.9, LatencyThreshold: time.Second, MaxEjectedPercent: 100,
	}})
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

// BenchmarkObserve reports successes with a latency (the common case) to
// one of 100 targets.
func BenchmarkObserve(b *testing.B) {
	c, addrs := benchChecker(b, 100)
	o := Outcome{Latency: 3 * time.Millisecond}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Observe(addrs[i%len(addrs)], o)
		i++
	}
}

// BenchmarkObserveParallel reports from every P at once: to one shared
// target (the worst case: every goroutine hits the same counters) and
// spread over 100 targets.
func BenchmarkObserveParallel(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(map[int]string{1: "targets=1", 100: "targets=100"}[n], func(b *testing.B) {
			c, addrs := benchChecker(b, n)
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
