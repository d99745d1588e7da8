package random

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

// The alias table encodes the weights exactly (to float rounding): summing
// each column's two outcomes gives every endpoint its weight share. This
// is deterministic, unlike a count of random picks.
func TestAliasTableExact(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	cases := map[string][]float64{
		"doc example":     {3, 1},
		"one heavy":       {1, 1, 1, 100},
		"slow start":      {0.1, 1, 1, 0.55},
		"tiny and huge":   {1e-6, 1e6, 3},
		"one almost zero": {5, 5, 5, 5, 1e-12},
	}
	for k := range 20 {
		ws := make([]float64, 1+rng.IntN(300))
		for i := range ws {
			ws[i] = 0.01 + rng.Float64()*rng.Float64()*100
		}
		cases[fmt.Sprint("random ", k)] = ws
	}
	for name, ws := range cases {
		t.Run(name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(ws...)
			cut, alias := aliasTable(ready)
			n := float64(len(ws))
			got := make([]float64, len(ws))
			for i := range ws {
				keep := float64(cut[i]) / (1 << 64)
				got[i] += keep / n
				got[alias[i]] += (1 - keep) / n
			}
			sum := 0.0
			for _, w := range ws {
				sum += w
			}
			for i, w := range ws {
				assert.InDelta(t, w/sum, got[i], 1e-12, "endpoint %d", i)
			}
		})
	}
}

func TestDistribution(t *testing.T) {
	// 4000 picks per endpoint: a ±10% band is more than 6 standard
	// deviations (σ ≈ 1.6% of the expected count).
	for _, n := range sizes {
		t.Run(fmt.Sprint("uniform n=", n), func(t *testing.T) {
			// k picks per endpoint; the band is 6.5 standard deviations.
			k := max(400, 100_000/n)
			ready := balancertest.Ready(n)
			p := Builder{}.Build(ready)
			require.Nil(t, p.(*Picker).cut, "equal weights take the uniform path")
			balancertest.CheckDistribution(t, ready, balancertest.Counts(t, p, k*n, nil), 6.5/math.Sqrt(float64(k)))
		})
	}
	weighted := map[string][]float64{
		"1 2 3 4":    {1, 2, 3, 4},
		"slow start": {0.1, 1, 1, 0.55},
		"100 mixed":  mixed(100),
	}
	for name, ws := range weighted {
		t.Run(name, func(t *testing.T) {
			ready := balancertest.ReadyWeights(ws...)
			p := Builder{}.Build(ready)
			minW, sum := math.Inf(1), 0.0
			for _, w := range ws {
				minW, sum = min(minW, w), sum+w
			}
			// Enough picks for 2000 on the lightest endpoint; ±15% is 6.7σ.
			picks := int(2000 * sum / minW)
			balancertest.CheckDistribution(t, ready, balancertest.Counts(t, p, picks, nil), 0.15)
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

func TestSingle(t *testing.T) {
	ready := balancertest.ReadyWeights(0.3)
	p := Builder{}.Build(ready)
	for range 100 {
		ep, err := p.Pick(balancer.PickInfo{})
		require.NoError(t, err)
		require.Same(t, ready[0].Endpoint, ep)
	}
}
