package weighted

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

func TestScheduleOrder(t *testing.T) {
	tests := []struct {
		weights []float64
		want    []uint32
	}{
		{[]float64{5, 1, 1}, []uint32{0, 0, 0, 1, 2, 0, 0}},
		{[]float64{2, 1}, []uint32{0, 1, 0}},
		{[]float64{1, 1, 1}, []uint32{0, 1, 2}},
		{[]float64{4, 2}, []uint32{0, 1, 0}}, // reduced by the gcd
		{[]float64{0.5, 1.5}, []uint32{1, 0, 1, 1}},
		{[]float64{3, 2}, []uint32{0, 1, 0, 1, 0}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			assert.Equal(t, tt.want, schedule(slots(tt.weights)))
		})
	}
}

func TestSlots(t *testing.T) {
	tests := []struct {
		name    string
		weights []float64
		want    []int // nil: inexact, check the 1/MaxSchedule bound
	}{
		{"integers", []float64{3, 1, 2}, []int{3, 1, 2}},
		{"gcd", []float64{100, 300, 200}, []int{1, 3, 2}},
		{"slow start step", []float64{3 * (0.1 + 0.9*3/10.0), 3, 1}, []int{111, 300, 100}},
		{"decimals", []float64{0.25, 0.5}, []int{1, 2}},
		{"large equal", []float64{4e9, 4e9}, []int{1, 1}},
		{"thirds", []float64{1, 1.0 / 3, math.Pi}, nil},
		{"cycle too long", []float64{65537, 1}, nil},
		{"tiny share", []float64{1e-9, 1, 1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := slots(tt.weights)
			if tt.want != nil {
				assert.Equal(t, tt.want, got)
				return
			}
			length, sum := 0, 0.0
			for i, c := range got {
				length += c
				sum += tt.weights[i]
			}
			require.Equal(t, MaxSchedule, length)
			for i, c := range got {
				assert.Less(t, math.Abs(float64(c)/MaxSchedule-tt.weights[i]/sum), 1.0/MaxSchedule, "endpoint %d", i)
			}
		})
	}
}

// Every endpoint's slots are spread over the cycle: between two of its
// slots there are at most ⌈L/c⌉ + n others.
func TestScheduleSmooth(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(3, 4))
	for k := range 12 {
		ws := make([]float64, 1+rng.IntN(50))
		for i := range ws {
			ws[i] = float64(1 + rng.IntN(20))
			if k%2 == 1 {
				ws[i] = 0.01 + rng.Float64()*10
			}
		}
		counts := slots(ws)
		sched := schedule(counts)
		L := len(sched)
		last := make([]int, len(ws))
		first := make([]int, len(ws))
		for i := range last {
			last[i], first[i] = -1, -1
		}
		for pos, i := range sched {
			if last[i] >= 0 {
				if gap, bound := pos-last[i], (L+counts[i]-1)/counts[i]+len(ws); gap > bound {
					t.Fatalf("weights %v: endpoint %d: gap %d > %d", ws, i, gap, bound)
				}
			} else {
				first[i] = pos
			}
			last[i] = pos
		}
		for i, c := range counts {
			if c > 0 { // the cycle wraps
				require.LessOrEqual(t, first[i]+L-last[i], (L+c-1)/c+len(ws))
			}
		}
	}
}

func TestDistribution(t *testing.T) {
	cases := map[string][]float64{
		"n=1":         {2.5},
		"n=3 equal":   {1, 1, 1},
		"1 2 3 4":     {1, 2, 3, 4},
		"slow start":  {0.1, 1, 1, 0.55},
		"n=100 mixed": mixed(100),
		"n=1000":      mixed(1000),
		"irrational":  {1, math.Sqrt2, math.Pi},
	}
	for name, ws := range cases {
		t.Run(name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(ws...)
			p := Builder{}.Build(ready).(*Picker)
			cycles := max(4, 200_000/len(p.sched))
			counts := balancertest.Counts(t, p, cycles*len(p.sched), nil)
			slots := p.Slots()
			minSlots := math.MaxInt
			for _, c := range slots {
				minSlots = min(minSlots, c)
			}
			// The schedule's error (exact, or < 1 slot of MaxSchedule) plus
			// less than one pick per counter shard.
			tol := (1 + float64(p.ctr.Shards())/float64(cycles)) / float64(minSlots)
			balancertest.CheckDistribution(t, ready, counts, tol)
			for i, w := range ready {
				assert.InDelta(t, cycles*slots[i], counts[w.Endpoint], float64(p.ctr.Shards()), "endpoint %d", i)
			}
		})
	}
}

func mixed(n int) []float64 {
	ws := make([]float64, n)
	for i := range ws {
		ws[i] = float64(1 + i%4)
	}
	return ws
}

// One shard replays the schedule from its offset: a deterministic cycle.
func TestShardFollowsSchedule(t *testing.T) {
	ready := balancertest.ReadyWeights(5, 1, 1)
	p := Builder{}.Build(ready).(*Picker)
	off := p.ctr.On(3)
	for k := range 3 * len(p.sched) {
		want := p.sched[(off+uint64(k)+1)%uint64(len(p.sched))]
		require.Equal(t, want, p.sched[p.ctr.On(3)])
	}
}

func TestRebuildsDoNotHerd(t *testing.T) {
	ready := balancertest.Ready(1000)
	firsts := map[*balancer.Endpoint]bool{}
	for range 20 {
		ep, err := Builder{}.Build(ready).Pick(balancer.PickInfo{})
		require.NoError(t, err)
		firsts[ep] = true
	}
	// 20 builds starting at random offsets among 1000: all equal has
	// probability 10^-57.
	assert.Greater(t, len(firsts), 1)
}

// BenchmarkBuild measures building a picker: exact integer weights and
// float weights that need the full MaxSchedule cycle.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		for _, kind := range []string{"exact", "float"} {
			ws := mixed(n)
			if kind == "float" {
				for i := range ws {
					ws[i] += 1.0 / 3
				}
			}
			ready := balancertest.ReadyWeights(ws...)
			b.Run(fmt.Sprintf("%s/n=%d", kind, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					Builder{}.Build(ready)
				}
			})
		}
	}
}
