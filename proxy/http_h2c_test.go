package proxy

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHTTPH2CUpstream(t *testing.T) {
	bs := []*testBackend{startH2CBackend(t, "a"), startH2CBackend(t, "b"), startH2CBackend(t, "c")}
	p := startProxy(t, HTTPConfig{H2C: true, Via: "edge", RetryStatuses: []int{503}}, bs...)
	c := testClient(t, 8)

	t.Run("headers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", p.url+"/headers", nil)
		req.Header.Set("X-Forwarded-For", "198.51.100.66")
		req.Header.Set("Connection", "X-Secret")
		req.Header.Set("X-Secret", "1")
		resp, err := c.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s := string(body)
		assert.Contains(t, s, "Proto: HTTP/2.0\n", "the backend was spoken to in HTTP/2")
		assert.Contains(t, s, "X-Forwarded-For: 127.0.0.1\n")
		assert.Contains(t, s, "Via: 1.1 edge\n")
		assert.NotContains(t, s, "X-Secret")
		assert.Equal(t, "2 edge", resp.Header.Get("Via"))
	})
	t.Run("streams incrementally", func(t *testing.T) {
		hold := make(chan struct{})
		for _, b := range bs {
			b.hold = hold
		}
		resp, err := c.Get(p.url + "/sse")
		require.NoError(t, err)
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "data: 0\n", line, "the first event arrives before the backend goes on")
		close(hold)
		rest, _ := io.ReadAll(br)
		assert.Contains(t, string(rest), "data: 2\n")
	})
	t.Run("upload", func(t *testing.T) {
		data := strings.Repeat("lbkit", 200000)
		resp, err := c.Post(p.url+"/upload", "text/plain", strings.NewReader(data))
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, fmt.Sprintf("%d %x ", len(data), sha256.Sum256([]byte(data))), string(body))
	})
	t.Run("retries hide a killed backend", func(t *testing.T) {
		bs[2].srv.Close()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var bad []string
		for range 4 {
			wg.Go(func() {
				for range 30 {
					code, body, _, err := fetch(c, p.url+"/")
					if err != nil || code != 200 || body == "c" {
						mu.Lock()
						bad = append(bad, fmt.Sprint(code, body, err))
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		assert.Empty(t, bad)
	})
}
