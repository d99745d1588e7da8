package sourcehash_test

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/sourcehash"
)

var types = []sourcehash.HashType{sourcehash.Consistent, sourcehash.MapBased}

// benchName names a benchmark case: the default (consistent) has no
// prefix, so BenchmarkPick/n=3 means the zero Builder as in every policy.
func benchName(ht sourcehash.HashType, n int) string {
	if ht == sourcehash.Consistent {
		return fmt.Sprintf("n=%d", n)
	}
	return fmt.Sprintf("%v/n=%d", ht, n)
}

// clients returns an info function whose keys are hashes of distinct
// client IPv4 addresses, as a front-end computes them.
func clients(base byte) func(int) balancer.PickInfo {
	return func(i int) balancer.PickInfo {
		a := netip.AddrFrom4([4]byte{base, byte(i >> 16), byte(i >> 8), byte(i)})
		return balancer.WithKey(balancer.HashAddr(a))
	}
}

func TestHashTypeString(t *testing.T) {
	assert.Equal(t, "consistent", sourcehash.Consistent.String())
	assert.Equal(t, "map-based", sourcehash.MapBased.String())
	assert.Equal(t, "HashType(9)", sourcehash.HashType(9).String())
}

func TestBuildInvalid(t *testing.T) {
	ready := balancertest.Ready(3)
	bad := balancertest.ReadyWeights(1, math.NaN())
	tests := []struct {
		name  string
		b     sourcehash.Builder
		ready []balancer.Weighted
		msg   string
	}{
		{"unknown hash type", sourcehash.Builder{HashType: 9}, ready, "sourcehash: unknown HashType(9)"},
		{"size not prime", sourcehash.Builder{Size: 1000}, ready, "maglev: "},
		{"size too small", sourcehash.Builder{Size: 3}, ready, "maglev: "},
		{"map-based NaN weight", sourcehash.Builder{HashType: sourcehash.MapBased}, bad, "sourcehash: "},
		{"consistent NaN weight", sourcehash.Builder{}, bad, "maglev: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.b.Build(tt.ready).Pick(balancer.WithKey(1))
			require.ErrorIs(t, err, balancer.ErrNoBackend)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

func TestMapSize(t *testing.T) {
	tests := []struct {
		weights []float64
		size    int
	}{
		{[]float64{1, 1, 1}, 3},               // 256 each, gcd 256
		{[]float64{1, 2, 4}, 7},               // 64 128 256, gcd 64
		{[]float64{1, 3}, 85 + 256},           // round(256/3) = 85, gcd 1
		{[]float64{0.1, 1, 1, 1}, 13 + 3*128}, // 26 256 256 256, gcd 2
		{[]float64{1e-9, 1}, 1 + 256},         // at least one slot each
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			p := sourcehash.Builder{HashType: sourcehash.MapBased}.Build(balancertest.ReadyWeights(tt.weights...))
			mp, ok := p.(*sourcehash.MapPicker)
			require.True(t, ok)
			assert.Equal(t, tt.size, mp.Size())
		})
	}
}

func TestPickDistribution(t *testing.T) {
	// Both tables follow the weights to within 1/256 (map-based) or
	// about 1% (Maglev); the tolerance covers sampling noise of 200k
	// picks too.
	tests := []struct {
		name    string
		weights []float64
		info    func(int) balancer.PickInfo
		tol     float64
	}{
		{"clients equal", []float64{1, 1, 1}, clients(10), 0.03},
		{"clients weighted", []float64{1, 2, 5}, clients(11), 0.03},
		{"keyless weighted", []float64{1, 2, 5}, nil, 0.03},
		{"slow start", []float64{0.1, 1, 1, 1}, clients(12), 0.06},
		{"sequential keys", []float64{1, 1, 1, 1}, func(i int) balancer.PickInfo { return balancer.WithKey(uint64(i)) }, 0.03},
		{"100 endpoints", slices.Repeat([]float64{1}, 100), balancertest.RandomKeys(13), 0.15},
	}
	for _, ht := range types {
		for _, tt := range tests {
			t.Run(ht.String()+"/"+tt.name, func(t *testing.T) {
				ready := balancertest.ReadyWeights(tt.weights...)
				p := sourcehash.Builder{HashType: ht}.Build(ready)
				counts := balancertest.Counts(t, p, 200000, tt.info)
				balancertest.CheckDistribution(t, ready, counts, tt.tol)
			})
		}
	}
}

func TestPickDeterministic(t *testing.T) {
	for _, ht := range types {
		t.Run(ht.String(), func(t *testing.T) {
			balancertest.CheckDeterministic(t, sourcehash.Builder{HashType: ht}, clients(20), 1, 2, 1, 3, 1, 0.5, 1, 2)
		})
	}
}

func TestConsistentMatchesMaglev(t *testing.T) {
	// The consistent table is lbkit's Maglev table: a client's backend
	// is the owner of slot key mod Size, as in the kernel data planes.
	ready := balancertest.Ready(7)
	p := sourcehash.Builder{}.Build(ready)
	m := maglev.Builder{}.Build(ready).(*maglev.Picker)
	keys := clients(30)
	for i := range 2000 {
		a, _ := p.Pick(keys(i))
		b, _ := m.Pick(keys(i))
		require.Same(t, a, b)
		require.Same(t, m.Endpoints()[m.Table().Lookup(keys(i).Key)], a)
	}
}

func TestDisruption(t *testing.T) {
	// Measured: consistent 1.0× the ideal 1/n for n=3 and n=10, about
	// 1.5× for n=100 (Maglev with 65537 slots); map-based moves far more.
	for _, n := range []int{3, 10, 100} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ready := balancertest.Ready(n)
			ratios := map[sourcehash.HashType]float64{}
			for _, ht := range types {
				b := sourcehash.Builder{HashType: ht}
				d := balancertest.Disruption(t, b.Build(ready), b.Build(balancertest.Without(ready, n/2)), 100000)
				ratios[ht] = d * float64(n)
				t.Logf("%v: disruption %.4f, ideal %.4f: %.2f×", ht, d, 1/float64(n), ratios[ht])
			}
			assert.LessOrEqual(t, ratios[sourcehash.Consistent], 1.8)
			assert.Greater(t, ratios[sourcehash.MapBased], ratios[sourcehash.Consistent],
				"map-based moves more clients than consistent")
		})
	}
}

// With Builder.Rand set, keyless picks are reproducible: the same seed
// gives the same picks, another seed other picks.
func TestSeededKeylessPicks(t *testing.T) {
	for _, ht := range types {
		t.Run(ht.String(), func(t *testing.T) {
			balancertest.CheckSeeded(t, func(src mrand.Source) balancer.Builder {
				return sourcehash.Builder{HashType: ht, Rand: src}
			})
		})
	}
}

func TestBuildEmpty(t *testing.T) {
	for _, ht := range types {
		balancertest.CheckEmpty(t, sourcehash.Builder{HashType: ht})
	}
}

func TestPickNoAllocs(t *testing.T) {
	for _, n := range []int{1, 3, 100, 1000} {
		for _, ht := range types {
			t.Run(fmt.Sprintf("%v/n=%d", ht, n), func(t *testing.T) {
				p := sourcehash.Builder{HashType: ht}.Build(balancertest.Ready(n))
				balancertest.CheckNoAllocs(t, p, clients(1)(n))
				balancertest.CheckNoAllocs(t, p, balancer.PickInfo{})
			})
		}
	}
}

func TestPickConcurrentWithUpdates(t *testing.T) {
	for _, ht := range types {
		t.Run(ht.String(), func(t *testing.T) {
			balancertest.CheckConcurrentWithUpdates(t, sourcehash.Builder{HashType: ht, Size: 1009})
		})
	}
}

// TestSlowStart shows a pool's slow start working through both hash
// types: a recovered backend's share of clients ramps up over the window.
func TestSlowStart(t *testing.T) {
	for _, ht := range types {
		t.Run(ht.String(), func(t *testing.T) {
			balancertest.CheckSlowStart(t, sourcehash.Builder{HashType: ht}, clients(40), 0.02, 0.005)
		})
	}
}

func ExampleBuilder() {
	pool := balancer.MustNew(balancer.Config{Builder: sourcehash.Builder{}})
	defer pool.Close()
	_ = pool.Set([]balancer.Backend{
		{Addr: netip.MustParseAddrPort("198.18.0.10:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.11:80")},
		{Addr: netip.MustParseAddrPort("198.18.0.12:80")},
	})

	// A front-end hashes the client's address; IPv4 and IPv4-mapped IPv6
	// forms of it hash alike.
	v4 := balancer.WithKey(balancer.HashAddr(netip.MustParseAddr("203.0.113.7")))
	v6 := balancer.WithKey(balancer.HashAddr(netip.MustParseAddr("::ffff:203.0.113.7")))
	a, _ := pool.Pick(v4)
	b, _ := pool.Pick(v6)
	fmt.Println("same backend for the same client:", a == b)

	// Another backend leaves: clients of the remaining ones stay put.
	var other netip.AddrPort
	for _, ep := range pool.Endpoints() {
		if ep != a {
			other = ep.Addr()
		}
	}
	pool.Remove(other)
	c, _ := pool.Pick(v4)
	fmt.Println("still the same backend:", a == c)
	// Output:
	// same backend for the same client: true
	// still the same backend: true
}

func BenchmarkBuild(b *testing.B) {
	for _, ht := range types {
		for _, n := range []int{3, 100, 1000} {
			b.Run(benchName(ht, n), func(b *testing.B) {
				ready := balancertest.Ready(n)
				ready[0].Weight = 0.3
				b.ReportAllocs()
				for b.Loop() {
					sourcehash.Builder{HashType: ht}.Build(ready)
				}
			})
		}
	}
}

// BenchmarkPick measures keyed picks on one goroutine, per hash type.
func BenchmarkPick(b *testing.B) {
	for _, ht := range types {
		b.Run(ht.String(), func(b *testing.B) { balancertest.BenchmarkPickKeyed(b, sourcehash.Builder{HashType: ht}, false) })
	}
}

// BenchmarkPickParallel measures keyed picks from GOMAXPROCS goroutines,
// per hash type.
func BenchmarkPickParallel(b *testing.B) {
	for _, ht := range types {
		b.Run(ht.String(), func(b *testing.B) { balancertest.BenchmarkPickKeyed(b, sourcehash.Builder{HashType: ht}, true) })
	}
}
