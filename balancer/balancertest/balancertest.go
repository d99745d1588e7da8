// Package balancertest provides fakes and reusable assertions for testing
// balancer policies and front-ends, in the spirit of net/http/httptest:
// ready sets of fake endpoints, pick counting, distribution against
// weights, disruption on churn and zero-allocation checks.
package balancertest

import (
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/lbkit/lbkit/balancer"
)

// Addr returns the fake address of endpoint i: 127.0.0.1:(10000+i) for
// i < 50000, then 127.0.0.2:10000 and so on.
func Addr(i int) netip.AddrPort {
	host := 1 + i/50000
	a := [4]byte{127, 0, byte(host >> 8), byte(host)}
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(10000+i%50000))
}

// Ready returns a ready set of n fake endpoints with weight 1.
func Ready(n int) []balancer.Weighted {
	ws := make([]float64, n)
	for i := range ws {
		ws[i] = 1
	}
	return ReadyWeights(ws...)
}

// ReadyWeights returns a ready set of fake endpoints with the given
// effective weights, one endpoint per weight.
func ReadyWeights(weights ...float64) []balancer.Weighted {
	r := make([]balancer.Weighted, len(weights))
	for i, w := range weights {
		ep := balancer.NewEndpoint(balancer.Backend{Addr: Addr(i), Weight: uint32(math.Max(1, math.Round(w)))})
		r[i] = balancer.Weighted{Endpoint: ep, Weight: w}
	}
	return r
}

// Counts picks n times from p, with the PickInfo given by info(i) (nil
// means no key), and returns how often each endpoint was chosen. It fails
// t on a pick error.
func Counts(t testing.TB, p balancer.Picker, n int, info func(i int) balancer.PickInfo) map[*balancer.Endpoint]int {
	t.Helper()
	c := make(map[*balancer.Endpoint]int)
	for i := range n {
		var pi balancer.PickInfo
		if info != nil {
			pi = info(i)
		}
		ep, err := p.Pick(pi)
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		c[ep]++
	}
	return c
}

// RandomKeys returns an info function for [Counts] that gives every pick a
// distinct, well-mixed key derived from seed.
func RandomKeys(seed uint64) func(i int) balancer.PickInfo {
	return func(i int) balancer.PickInfo {
		return balancer.WithKey(balancer.Mix64(seed ^ uint64(i)*0x9e3779b97f4a7c15))
	}
}

// CheckDistribution fails t unless every endpoint of ready received its
// weighted share of the picks in counts within a relative tolerance tol
// (0.05 means ±5% of its expected count), and nothing outside ready was
// picked.
func CheckDistribution(t testing.TB, ready []balancer.Weighted, counts map[*balancer.Endpoint]int, tol float64) {
	t.Helper()
	total, sumW := 0, 0.0
	for _, n := range counts {
		total += n
	}
	in := make(map[*balancer.Endpoint]bool, len(ready))
	for _, w := range ready {
		sumW += w.Weight
		in[w.Endpoint] = true
	}
	for ep := range counts {
		if !in[ep] {
			t.Errorf("picked %v, which is not in the ready set", ep.Addr())
		}
	}
	for _, w := range ready {
		want := float64(total) * w.Weight / sumW
		got := float64(counts[w.Endpoint])
		if math.Abs(got-want) > tol*want {
			t.Errorf("%v (weight %g): %d picks, want %.0f ± %.0f%%", w.Endpoint.Addr(), w.Weight, counts[w.Endpoint], want, tol*100)
		}
	}
}

// Disruption returns the fraction of n keyed picks (keys from [RandomKeys]
// with seed 1) whose endpoint address differs between before and after.
// After removing one of N backends, the ideal for consistent hashing is
// 1/N.
func Disruption(t testing.TB, before, after balancer.Picker, n int) float64 {
	t.Helper()
	keys := RandomKeys(1)
	moved := 0
	for i := range n {
		a, err := before.Pick(keys(i))
		if err != nil {
			t.Fatalf("before: %v", err)
		}
		b, err := after.Pick(keys(i))
		if err != nil {
			t.Fatalf("after: %v", err)
		}
		if a.Addr() != b.Addr() {
			moved++
		}
	}
	return float64(moved) / float64(n)
}

// Without returns a copy of ready without the entry at index i.
func Without(ready []balancer.Weighted, i int) []balancer.Weighted {
	out := make([]balancer.Weighted, 0, len(ready)-1)
	out = append(out, ready[:i]...)
	return append(out, ready[i+1:]...)
}

// CheckNoAllocs fails t if picking from p with info allocates.
func CheckNoAllocs(t testing.TB, p balancer.Picker, info balancer.PickInfo) {
	t.Helper()
	var err error
	allocs := testing.AllocsPerRun(1000, func() { _, err = p.Pick(info) })
	if err != nil {
		t.Fatalf("pick: %v", err)
	}
	if allocs != 0 {
		t.Errorf("Pick allocates %v times per call, want 0", allocs)
	}
}

// Spread summarises how evenly work was spread: the largest count divided
// by the mean (1 is perfectly even). It returns 0 for no picks.
func Spread(counts map[*balancer.Endpoint]int, endpoints int) float64 {
	total, most := 0, 0
	for _, n := range counts {
		total += n
		most = max(most, n)
	}
	if total == 0 || endpoints == 0 {
		return 0
	}
	return float64(most) / (float64(total) / float64(endpoints))
}

// Describe formats counts as "addr=n" pairs in the order of ready, for
// failure messages and examples.
func Describe(ready []balancer.Weighted, counts map[*balancer.Endpoint]int) string {
	s := ""
	for i, w := range ready {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%v=%d", w.Endpoint.Addr(), counts[w.Endpoint])
	}
	return s
}
