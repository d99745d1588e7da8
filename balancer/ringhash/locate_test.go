package ringhash

import (
	"math"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

// reference returns the index of the first point ≥ pos by binary search,
// wrapping to 0: the textbook ring lookup that locate must agree with.
func reference(p *Picker, pos uint64) int {
	pts := p.points[:len(p.points)-1]
	i := sort.Search(len(pts), func(i int) bool { return pts[i] >= pos })
	if i == len(pts) {
		return 0
	}
	return i
}

func checkLocate(t *testing.T, p *Picker, h uint64) {
	pos := h &^ p.mask
	got := p.locate(pos)
	want := reference(p, pos)
	last := len(p.points) - 1
	if got == last { // the sentinel stands for the first point
		require.Equal(t, p.points[0]&p.mask, p.points[got]&p.mask)
		got = 0
	}
	require.Equal(t, want, got, "pos %#x", pos)
}

func TestLocateMatchesBinarySearch(t *testing.T) {
	tests := []struct {
		name string
		b    Builder
		n    int
	}{
		{"one point", Builder{PointsPerWeight: 1}, 1},
		{"two points", Builder{PointsPerWeight: 1}, 2},
		{"three points", Builder{PointsPerWeight: 1}, 3},
		{"power of two", Builder{PointsPerWeight: 64}, 4},
		{"default", Builder{}, 7},
		{"many endpoints", Builder{PointsPerWeight: 3}, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.b.build(balancertest.Ready(tt.n))
			require.NoError(t, err)
			// The edges: below the first point, on every point, just
			// after every point, and the top of the ring.
			for _, h := range []uint64{0, 1, math.MaxUint64} {
				checkLocate(t, p, h)
			}
			for _, pt := range p.points[:len(p.points)-1] {
				checkLocate(t, p, pt)
				checkLocate(t, p, pt+p.mask+1)
				checkLocate(t, p, pt-1)
			}
			for i := range 20000 {
				checkLocate(t, p, balancer.Mix64(uint64(i)))
			}
		})
	}
}

// FuzzLocate checks the bucket index against a binary search for
// arbitrary positions and ring shapes.
func FuzzLocate(f *testing.F) {
	f.Add(uint64(0), uint16(1), uint16(1))              // a one-point ring, position 0
	f.Add(uint64(math.MaxUint64), uint16(3), uint16(5)) // the top of the ring
	f.Add(uint64(1<<63), uint16(100), uint16(160))      // a default-sized ring
	f.Fuzz(func(t *testing.T, h uint64, n, per uint16) {
		b := Builder{PointsPerWeight: float64(per%500 + 1)}
		p, err := b.build(balancertest.Ready(int(n%300) + 1))
		require.NoError(t, err)
		checkLocate(t, p, h)
		checkLocate(t, p, balancer.Mix64(h))
	})
}
