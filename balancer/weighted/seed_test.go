package weighted

import (
	"math/rand/v2"
	"testing"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

// With Builder.Rand set, the same seed gives the same picks, and another
// seed other picks.
func TestSeededIsDeterministic(t *testing.T) {
	balancertest.CheckSeeded(t, func(src rand.Source) balancer.Builder { return Builder{Rand: src} })
}
