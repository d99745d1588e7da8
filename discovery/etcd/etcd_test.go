package etcd

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v3"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/discovery"

	"github.com/lbkit/lbkit/internal/testlog"
)

const prefix = "/lbkit/pools/web/"

// runSync runs a Syncer of src into pool until the test ends.
func runSync(t *testing.T, pool *balancer.Pool, src discovery.Source, logs *testlog.Buffer) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- (&discovery.Syncer{Pool: pool, Sources: []discovery.Source{src}, Logger: slog.New(slog.NewTextHandler(logs, nil)), RetryMin: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}).Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
}

func TestWatch(t *testing.T) {
	srv := startEtcd(t)
	admin := newClient(t, srv.client.String())
	put(t, admin, prefix+"a", `{"addr": "198.18.0.1:80", "weight": 2, "zone": "a", "meta": {"url": "http://one"}}`)
	put(t, admin, prefix+"b", `{"addr": "198.18.0.2:80"}`)
	put(t, admin, "/lbkit/pools/webx/c", `{"addr": "198.18.0.9:80"}`) // beside the prefix

	// The source reaches etcd through a link the test can cut.
	lnk := newLink(t, srv.client.Host)
	src, err := New(Config{Prefix: prefix, Client: newClient(t, lnk.addr()), RequestTimeout: time.Second})
	require.NoError(t, err)
	pool := newPool(t, "web")
	var logs testlog.Buffer
	runSync(t, pool, src, &logs)

	waitMembers(t, pool, 10*time.Second, "198.18.0.1:80", "198.18.0.2:80")
	ep := pool.Endpoint(netipAP("198.18.0.1:80"))
	assert.Equal(t, uint32(2), ep.Backend().Weight)
	assert.Equal(t, "a", ep.Zone())
	assert.Equal(t, "http://one", ep.Meta("url"))

	// Changes arrive through the watch.
	put(t, admin, prefix+"c", `{"addr": "198.18.0.3:80"}`)
	waitMembers(t, pool, 10*time.Second, "198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80")
	del(t, admin, prefix+"a")
	waitMembers(t, pool, 10*time.Second, "198.18.0.2:80", "198.18.0.3:80")

	// A bad value is reported; the key keeps its member.
	put(t, admin, prefix+"b", `{"addr": "web-2:80"}`)
	logs.WaitFor(t, `key /lbkit/pools/web/b: etcd: member addr \"web-2:80\": want IP:port`, 10*time.Second)
	assert.Equal(t, []string{"198.18.0.2:80", "198.18.0.3:80"}, members(pool))
	put(t, admin, prefix+"b", `{"addr": "198.18.0.2:80", "weight": 5}`)
	waitMembers(t, pool, 10*time.Second, "198.18.0.2:80", "198.18.0.3:80")

	t.Run("restart", func(t *testing.T) {
		// etcd goes down: the members stay.
		srv.stop()
		assert.Equal(t, []string{"198.18.0.2:80", "198.18.0.3:80"}, members(pool))
		// It comes back on the same data and ports: the watch resumes.
		srv.start()
		assert.Equal(t, []string{"198.18.0.2:80", "198.18.0.3:80"}, members(pool), "members survive the restart")
		put(t, admin, prefix+"d", `{"addr": "198.18.0.4:80"}`)
		waitMembers(t, pool, 20*time.Second, "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80")
	})

	t.Run("compaction while disconnected", func(t *testing.T) {
		// The source loses its connection; meanwhile members change
		// and the history is compacted past the revision its watch
		// needs. Back, it reads the prefix again.
		lnk.setCut(true)
		del(t, admin, prefix+"c")
		put(t, admin, prefix+"e", `{"addr": "198.18.0.5:80"}`)
		rev := put(t, admin, prefix+"f", `{"addr": "198.18.0.6:80"}`)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := admin.Compact(ctx, rev, clientv3.WithCompactPhysical())
		cancel()
		require.NoError(t, err)
		assert.Equal(t, []string{"198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80"}, members(pool), "no member dropped while disconnected")
		lnk.setCut(false)
		waitMembers(t, pool, 20*time.Second, "198.18.0.2:80", "198.18.0.4:80", "198.18.0.5:80", "198.18.0.6:80")
		logs.WaitFor(t, "was compacted", time.Second)
		assert.Contains(t, logs.String(), "pool=web source=\"etcd /lbkit/pools/web/\"")
	})
}

func TestRegisterLease(t *testing.T) {
	srv := startEtcd(t)
	src, err := New(Config{Prefix: prefix, Endpoints: []string{srv.client.String()}})
	require.NoError(t, err)
	pool := newPool(t, "web")
	var logs testlog.Buffer
	runSync(t, pool, src, &logs)

	// A backend registers itself with a short lease and then dies: its
	// client stops renewing, so its member goes when the lease expires.
	dying := newClient(t, srv.client.String())
	regDone := make(chan error, 1)
	go func() {
		regDone <- Register(t.Context(), dying, prefix, balancer.Backend{Addr: netipAP("198.18.0.7:80"), Weight: 3}, 2*time.Second)
	}()
	// Another registers and leaves cleanly: its member goes at once.
	cleanCtx, leave := context.WithCancel(t.Context())
	cleanDone := make(chan error, 1)
	go func() {
		cleanDone <- Register(cleanCtx, newClient(t, srv.client.String()), prefix, balancer.Backend{Addr: netipAP("198.18.0.8:80")}, 30*time.Second)
	}()
	waitMembers(t, pool, 10*time.Second, "198.18.0.7:80", "198.18.0.8:80")
	assert.Equal(t, uint32(3), pool.Endpoint(netipAP("198.18.0.7:80")).Backend().Weight)

	leave()
	require.NoError(t, <-cleanDone)
	took := waitMembers(t, pool, 10*time.Second, "198.18.0.7:80")
	t.Logf("revoked member gone after %v", took)

	// The dying backend's member outlives its last renewal by about its
	// lease's TTL, not longer. (The clean one's TTL was 30 s: it went
	// within the wait above because its lease was revoked.)
	closed := time.Now()

	dying.Close()
	assert.ErrorContains(t, <-regDone, "client closed")
	waitMembers(t, pool, 15*time.Second)
	took = time.Since(closed)
	t.Logf("expired member gone %v after its client closed", took)
	assert.GreaterOrEqual(t, took, time.Second, "not revoked: it expired (renewals come every TTL/3)")
}

func TestRegisterSurvivesRestart(t *testing.T) {
	const ttl = 8 * time.Second
	srv := startEtcd(t)
	c := newClient(t, srv.client.String())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		// The TTL outlasts the embedded server's slowest stop seen (5.2 s,
		// waiting for its clients' streams while its lessor still ran),
		// or the lease could expire while nobody can renew it.
		done <- Register(ctx, c, prefix, balancer.Backend{Addr: netipAP("198.18.0.7:80")}, ttl)
	}()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	src, err := New(Config{Prefix: prefix, Client: newClient(t, srv.client.String())})
	require.NoError(t, err)
	pool := newPool(t, "web")
	var logs testlog.Buffer
	runSync(t, pool, src, &logs)
	waitMembers(t, pool, 10*time.Second, "198.18.0.7:80")

	srv.stop()
	srv.start()
	// Kept alive across the restart: still there after two TTLs.
	timer := time.NewTimer(2 * ttl)
	defer timer.Stop()
	for {
		s := pool.Snapshot()
		require.Equal(t, []string{"198.18.0.7:80"}, members(pool), "the registered member stays")
		select {
		case <-s.Changed():
			continue
		case <-timer.C:
		}
		break
	}
}

func TestParseMember(t *testing.T) {
	b, err := ParseMember([]byte(`{"addr": "[::ffff:198.18.0.1]:80", "weight": 4, "zone": "z", "meta": {"k": "v"}}`))
	require.NoError(t, err)
	assert.Equal(t, balancer.Backend{Addr: netipAP("198.18.0.1:80"), Weight: 4, Zone: "z", Meta: map[string]string{"k": "v"}}, b)
	v, err := MarshalMember(b)
	require.NoError(t, err)
	assert.JSONEq(t, `{"addr": "198.18.0.1:80", "weight": 4, "zone": "z", "meta": {"k": "v"}}`, string(v))
	for _, bad := range []string{`{"addr": "198.18.0.1"}`, `{"addr": "198.18.0.1:0"}`, `{"addr": "198.18.0.1:80", "wieght": 1}`, `nope`} {
		_, err := ParseMember([]byte(bad))
		assert.Error(t, err, bad)
	}
	_, err = New(Config{})
	assert.ErrorContains(t, err, "etcd: Prefix is required")
	_, err = New(Config{Prefix: prefix})
	assert.ErrorContains(t, err, "etcd: Endpoints or Client is required")
}

func TestConfigYAML(t *testing.T) {
	var cfg Config
	dec := yaml.NewDecoder(strings.NewReader(`{endpoints: ["http://127.0.0.1:2379"], prefix: /lbkit/pools/web/, username: u, password: p, dial_timeout: 2s, request_timeout: 1s}`))
	dec.KnownFields(true)
	require.NoError(t, dec.Decode(&cfg))
	assert.Equal(t, Config{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: prefix, Username: "u", Password: "p", DialTimeout: 2 * time.Second, RequestTimeout: time.Second}, cfg)
	_, err := New(cfg)
	assert.NoError(t, err)
}
