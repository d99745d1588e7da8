package first

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/balancertest"
)

func TestAlwaysFirst(t *testing.T) {
	for _, n := range sizes {
		t.Run(fmt.Sprint("n=", n), func(t *testing.T) {
			ready := loadedReady(n)
			counts := balancertest.Counts(t, Builder{}.Build(ready), 1000, nil)
			assert.Equal(t, map[*balancer.Endpoint]int{ready[0].Endpoint: 1000}, counts)
		})
	}
}

// Through a pool: the primary takes everything, a failure moves picks to
// the first backup, recovery moves them back, drain behaves like failure.
func TestActiveBackup(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: Builder{}})
	defer pool.Close()
	primary, backup1, backup2 := balancertest.Addr(0), balancertest.Addr(1), balancertest.Addr(2)
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: primary}, {Addr: backup1, Weight: 10}, {Addr: backup2}}))
	pick := func() any {
		ep, err := pool.Pick(balancer.PickInfo{})
		if err != nil {
			return err
		}
		return ep.Addr()
	}
	steps := []struct {
		name   string
		change func()
		want   any
	}{
		{"primary", func() {}, primary},
		{"primary down", func() { pool.SetHealthy(primary, false) }, backup1},
		{"first backup down", func() { pool.SetHealthy(backup1, false) }, backup2},
		{"primary back", func() { pool.SetHealthy(primary, true) }, primary},
		{"primary draining", func() { pool.SetDraining(primary, true) }, backup2},
		{"first backup back", func() { pool.SetHealthy(backup1, true) }, backup1},
		{"all gone", func() {
			pool.SetHealthy(backup1, false)
			pool.SetHealthy(backup2, false)
		}, balancer.ErrNoBackend},
	}
	for _, s := range steps {
		s.change()
		assert.Equal(t, s.want, pick(), s.name)
	}
}

// In panic mode the ready set includes unhealthy members; the picker
// still prefers the first healthy one.
func TestPanicPrefersHealthy(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: Builder{}, PanicThreshold: 0.6})
	defer pool.Close()
	a, b := balancertest.Addr(0), balancertest.Addr(1)
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: a}, {Addr: b}}))
	pool.SetHealthy(a, false)
	require.True(t, pool.Snapshot().Panic)
	require.Len(t, pool.Snapshot().Ready, 2)
	ep, err := pool.Pick(balancer.PickInfo{})
	require.NoError(t, err)
	assert.Equal(t, b, ep.Addr())

	pool.SetHealthy(b, false) // nobody healthy: the first of the set
	ep, err = pool.Pick(balancer.PickInfo{})
	require.NoError(t, err)
	assert.Equal(t, a, ep.Addr())
}
