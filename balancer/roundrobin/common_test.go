package roundrobin

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lbkit/lbkit/balancer"
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

// BenchmarkPickShortLived picks from many short-lived goroutines, as an
// HTTP server's per-connection goroutines do, next to BenchmarkPickParallel
// (long-lived workers: the shard choice's best case, since stacks
// allocated one after another get distinct shards). Each goroutine makes
// perConn picks and exits, up to 64 run at once; a new goroutine reuses
// some freed stack, so goroutines running at the same time may share a
// shard. "spawn" is the same loop without a pick (subtract it to get the
// pick's cost) and "atomic" a single shared counter (gRPC's round robin).
func BenchmarkPickShortLived(b *testing.B) {
	ready := balancertest.LoadedReady(100)
	rr := Builder{}.Build(ready)
	var ctr atomic.Uint64
	for _, perConn := range []int{1, 10} {
		for _, bc := range []struct {
			name string
			pick func()
		}{
			{"spawn", func() {}},
			{"roundrobin", func() { _, _ = rr.Pick(balancer.PickInfo{}) }},
			{"atomic", func() { _ = ready[(ctr.Add(1)-1)%uint64(len(ready))].Endpoint }},
		} {
			b.Run(fmt.Sprintf("picks=%d/%s", perConn, bc.name), func(b *testing.B) {
				sem := make(chan struct{}, 64)
				var wg sync.WaitGroup
				b.ReportAllocs()
				for i := 0; i < b.N; i += perConn {
					sem <- struct{}{}
					wg.Go(func() {
						for range perConn {
							bc.pick()
						}
						<-sem
					})
				}
				wg.Wait()
			})
		}
	}
}
