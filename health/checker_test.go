package health

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRiseFall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, rec := newChecker(t, Config{})
		p := &switchProbe{}
		a := addr(1)
		require.NoError(t, c.SetTarget(Target{Addr: a, Probe: p, Interval: time.Second, Jitter: -1, Initial: Healthy}))
		synctest.Wait()
		assert.Equal(t, []tr{{Healthy, "added"}}, transitions(rec.take()))

		time.Sleep(time.Second) // past the first probe (random fraction of the interval)
		synctest.Wait()
		p.fail.Store(true)
		for range 2 {
			time.Sleep(time.Second)
			synctest.Wait()
			assert.Equal(t, Healthy, c.State(a), "fall is 3")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a))
		assert.Equal(t, []tr{{Unhealthy, "probe"}}, transitions(rec.take()))

		p.fail.Store(false)
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, Unhealthy, c.State(a), "rise is 2")
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, Healthy, c.State(a))
		assert.Equal(t, []tr{{Healthy, "probe"}}, transitions(rec.take()))
	})
}
