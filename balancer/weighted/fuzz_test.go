package weighted

import (
	"encoding/binary"
	"math"
	"testing"
)

// FuzzSchedule builds schedules from arbitrary weights (any float64 bit
// pattern, bad ones included) and checks the invariants: the cycle holds
// Σ slots entries, each endpoint appears exactly its slot count, shares
// are within one slot of the weights, and the build never panics.
func FuzzSchedule(f *testing.F) {
	seed := func(ws ...float64) []byte {
		b := make([]byte, 8*len(ws))
		for i, w := range ws {
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(w))
		}
		return b
	}
	f.Add(seed(5, 1, 1))                        // the doc example
	f.Add(seed(0.1, 1, 1, 0.55))                // slow start
	f.Add(seed(1, 1.0/3, math.Pi))              // inexact
	f.Add(seed(1e-300, 1e300))                  // extreme ratio
	f.Add(seed(math.NaN(), 0, -1, math.Inf(1))) // contract violations
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b) / 8
		if n == 0 || n > 300 {
			return
		}
		ws := make([]float64, n)
		sum := 0.0
		for i := range ws {
			ws[i] = weight(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
			sum += ws[i]
		}
		if math.IsInf(sum, 0) {
			return // the shares themselves are not representable
		}
		counts := slots(ws)
		sched := schedule(counts)
		length := 0
		for _, c := range counts {
			if c < 0 {
				t.Fatalf("negative slot count %d", c)
			}
			length += c
		}
		if length != len(sched) || length == 0 {
			t.Fatalf("cycle %d for %d slots", len(sched), length)
		}
		seen := make([]int, n)
		for _, i := range sched {
			seen[i]++
		}
		for i := range counts {
			if seen[i] != counts[i] {
				t.Fatalf("endpoint %d: %d entries for %d slots", i, seen[i], counts[i])
			}
			if d := math.Abs(float64(counts[i]) - ws[i]/sum*float64(length)); d >= 1+1e-6 {
				t.Fatalf("endpoint %d: %d slots of %d for share %g (off by %g)", i, counts[i], length, ws[i]/sum, d)
			}
		}
	})
}
