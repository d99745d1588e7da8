package proxy

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHTTPClassicExperiment is the classic load-balancer experiment at
// test size: 10,000 requests from 1,000 concurrent clients through the
// proxy to three backends, every one of which must succeed. With -short
// or -race (which slows loopback traffic five- to tenfold, too much for a
// 2-core CI runner) it sends 2,000 requests from 200 clients.
func TestHTTPClassicExperiment(t *testing.T) {
	total, conc := 10000, 1000
	if testing.Short() || raceEnabled {
		total, conc = 2000, 200
	}
	bs := []*testBackend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	p := startProxy(t, HTTPConfig{}, bs...)
	c := testClient(t, conc)

	var next, ok atomic.Int64
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(total) {
				resp, err := c.Get(p.url + "/")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode == http.StatusOK {
						ok.Add(1)
						continue
					}
				}
				mu.Lock()
				if len(errs) < 10 {
					errs = append(errs, errString(err, resp))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Empty(t, errs)
	assert.Equal(t, int64(total), ok.Load(), "100%% success")
	var sum int64
	for _, b := range bs {
		n := b.hits.Load()
		sum += n
		assert.InDelta(t, float64(total)/3, float64(n), float64(total)/10, "backend %s", b.name)
	}
	assert.Equal(t, int64(total), sum)
}

func errString(err error, resp *http.Response) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}
