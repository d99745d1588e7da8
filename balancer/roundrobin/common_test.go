package roundrobin

import (
	"testing"

	"github.com/lbkit/lbkit/balancer/balancertest"
)

var sizes = balancertest.Sizes

func TestBuildEmpty(t *testing.T) { balancertest.CheckEmpty(t, Builder{}) }
func TestNoAllocs(t *testing.T)   { balancertest.CheckNoAllocsAtSizes(t, Builder{}) }
func TestPickConcurrentWithUpdates(t *testing.T) {
	balancertest.CheckConcurrentWithUpdates(t, Builder{})
}
func TestInvalidWeightsCountAsOne(t *testing.T) { balancertest.CheckInvalidWeights(t, Builder{}) }

// BenchmarkPick measures one pick on one goroutine.
func BenchmarkPick(b *testing.B) { balancertest.BenchmarkPick(b, Builder{}, false) }

// BenchmarkPickParallel measures picks from GOMAXPROCS goroutines at once.
func BenchmarkPickParallel(b *testing.B) { balancertest.BenchmarkPick(b, Builder{}, true) }
