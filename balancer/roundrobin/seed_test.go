package roundrobin

import (
	"fmt"
	mrand "math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

// With Builder.Rand set, the same seed gives the same picks, and another
// seed other picks.
func TestSeededIsDeterministic(t *testing.T) {
	for _, n := range []int{3, 100} {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := loadedReady(n)
			picks := func(seed uint64) []*balancer.Endpoint {
				p := Builder{Rand: mrand.NewPCG(seed, 1)}.Build(ready)
				out := make([]*balancer.Endpoint, 200)
				for i := range out {
					ep, err := p.Pick(balancer.PickInfo{})
					require.NoError(t, err)
					out[i] = ep
				}
				return out
			}
			assert.Equal(t, picks(1), picks(1))
			assert.NotEqual(t, picks(1), picks(2))
		})
	}
}
