package random

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/lbkit/lbkit/balancer/balancertest"
)

// FuzzAliasTable builds alias tables from arbitrary weights and checks
// that the columns add back up to every endpoint's share.
func FuzzAliasTable(f *testing.F) {
	seed := func(ws ...float64) []byte {
		b := make([]byte, 8*len(ws))
		for i, w := range ws {
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(w))
		}
		return b
	}
	f.Add(seed(3, 1))
	f.Add(seed(0.1, 1, 1, 0.55))
	f.Add(seed(1e-300, 1e300, 2))
	f.Add(seed(math.NaN(), 0, -1, math.Inf(1), 4))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b) / 8
		if n == 0 || n > 300 {
			return
		}
		ready := balancertest.ReadyWeights(make([]float64, n)...)
		sum := 0.0
		for i := range ready {
			ready[i].Weight = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
			sum += weight(ready[i].Weight)
		}
		if math.IsInf(sum, 0) {
			return
		}
		cut, alias := aliasTable(ready)
		got := make([]float64, n)
		for i := range n {
			if int(alias[i]) >= n {
				t.Fatalf("alias %d out of range", alias[i])
			}
			keep := float64(cut[i]) / (1 << 64)
			got[i] += keep / float64(n)
			got[alias[i]] += (1 - keep) / float64(n)
		}
		for i := range n {
			if want := weight(ready[i].Weight) / sum; math.Abs(got[i]-want) > 1e-9 {
				t.Fatalf("endpoint %d: share %g, want %g", i, got[i], want)
			}
		}
	})
}
