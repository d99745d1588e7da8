package discovery

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

const testZone = `$ORIGIN example.test.
$TTL 3600
@      3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 1
@      3600 IN NS  ns
ns     3600 IN A   127.0.0.1
web       1 IN A   198.18.0.1
web       1 IN A   198.18.0.2
web       1 IN AAAA 2001:db8::1
slow   3600 IN A   198.18.0.50
_http._tcp.svc 1 IN SRV 10 60 8080 a.svc
_http._tcp.svc 1 IN SRV 10 20 8081 b.svc
_http._tcp.svc 1 IN SRV 20 0 9090 c.svc
a.svc     1 IN A   198.18.1.1
b.svc     1 IN A   198.18.1.2
b.svc     1 IN AAAA 2001:db8::12
c.svc     1 IN A   198.18.1.3
`

// watchDNS runs src.Watch until the test ends and returns its sink.
func watchDNS(t *testing.T, src Source) *recSink {
	ctx, cancel := context.WithCancel(t.Context())
	sink := newRecSink(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, sink) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	return sink
}

func TestDNSAddressRecords(t *testing.T) {
	k := startKnot(t, "example.test.", testZone)
	src, err := NewDNS(DNSConfig{Name: "web.example.test", Port: 80, Weight: 2, Zone: "a", Servers: []string{k.addr}, TCP: true, MinTTL: 100 * time.Millisecond})
	require.NoError(t, err)
	pool := newPool(t, "web")
	stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{src}, Logger: quiet})
	defer stop()

	waitMembers(t, pool, 5*time.Second, "198.18.0.1:80", "198.18.0.2:80", "[2001:db8::1]:80")
	assert.Equal(t, uint32(2), pool.Endpoint(ap("198.18.0.1:80")).Backend().Weight)
	assert.Equal(t, "a", pool.Endpoint(ap("198.18.0.1:80")).Zone())

	// Records changed by RFC 2136 while the source runs reach the pool
	// within the records' TTL of 1 s (plus a query).
	k.update([]string{"web.example.test. 1 IN A 198.18.0.1", "web.example.test. 1 IN AAAA 2001:db8::1"},
		[]string{"web.example.test. 1 IN A 198.18.0.3"})
	took := waitMembers(t, pool, 5*time.Second, "198.18.0.2:80", "198.18.0.3:80")
	assert.Less(t, took, 2500*time.Millisecond, "a change under a TTL of 1 s reaches the pool within the TTL and a look-up")
}

func TestDNSSRV(t *testing.T) {
	k := startKnot(t, "example.test.", testZone)
	src, err := NewDNS(DNSConfig{Name: "_http._tcp.svc.example.test", Type: "SRV", Servers: []string{k.addr}, MinTTL: 100 * time.Millisecond})
	require.NoError(t, err)
	pool := newPool(t, "svc")
	stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{src}, Logger: quiet})
	defer stop()

	// Only the lowest priority present (10); weight and port from the
	// records; every address of a target.
	waitMembers(t, pool, 5*time.Second, "198.18.1.1:8080", "198.18.1.2:8081", "[2001:db8::12]:8081")
	assert.Equal(t, uint32(60), pool.Endpoint(ap("198.18.1.1:8080")).Backend().Weight)
	assert.Equal(t, uint32(20), pool.Endpoint(ap("198.18.1.2:8081")).Backend().Weight)

	// The priority-10 records go: the priority-20 group takes over.
	k.update([]string{"_http._tcp.svc.example.test. 1 IN SRV 10 60 8080 a.svc.example.test.", "_http._tcp.svc.example.test. 1 IN SRV 10 20 8081 b.svc.example.test."}, nil)
	waitMembers(t, pool, 5*time.Second, "198.18.1.3:9090")
	assert.Equal(t, uint32(1), pool.Endpoint(ap("198.18.1.3:9090")).Backend().Weight, "SRV weight 0 counts as 1")

	// A target's address changes.
	k.update([]string{"c.svc.example.test. 1 IN A 198.18.1.3"}, []string{"c.svc.example.test. 1 IN A 198.18.1.4"})
	waitMembers(t, pool, 5*time.Second, "198.18.1.4:9090")
}

// TestDNSTTL checks the time between look-ups: the records' TTL, bounded
// by MinTTL and MaxTTL. The source reports a set at each look-up.
func TestDNSTTL(t *testing.T) {
	k := startKnot(t, "example.test.", testZone)
	gaps := func(t *testing.T, cfg DNSConfig) []time.Duration {
		cfg.Servers = []string{k.addr}
		src, err := NewDNS(cfg)
		require.NoError(t, err)
		sink := watchDNS(t, src)
		last := time.Now()
		sink.nextSet(t, 5*time.Second)
		var out []time.Duration
		for range 2 {
			sink.nextSet(t, 10*time.Second)
			now := time.Now()
			out = append(out, now.Sub(last))
			last = now
		}
		return out
	}
	t.Run("ttl", func(t *testing.T) {
		t.Parallel()
		// (Gaps are measured where the sets arrive, so the lower bounds
		// allow for a late first arrival.)
		// The gap is the TTL plus a look-up: never shorter, and far
		// from MinTTL (100 ms) and MaxTTL (5 m).
		for _, g := range gaps(t, DNSConfig{Name: "web.example.test", Type: "A", Port: 80, MinTTL: 100 * time.Millisecond}) {
			assert.GreaterOrEqual(t, g, 900*time.Millisecond, "TTL 1 s: looked up again after a second")
			assert.Less(t, g, 2500*time.Millisecond, "TTL 1 s: looked up again after a second")
		}
	})
	t.Run("max", func(t *testing.T) {
		t.Parallel()
		for _, g := range gaps(t, DNSConfig{Name: "slow.example.test", Type: "A", Port: 80, MinTTL: 100 * time.Millisecond, MaxTTL: 300 * time.Millisecond}) {
			assert.GreaterOrEqual(t, g, 250*time.Millisecond, "TTL 3600 s clamped to MaxTTL 300 ms")
			assert.Less(t, g, 1500*time.Millisecond, "TTL 3600 s clamped to MaxTTL 300 ms")
		}
	})
	t.Run("min", func(t *testing.T) {
		t.Parallel()
		for _, g := range gaps(t, DNSConfig{Name: "web.example.test", Type: "A", Port: 80, MinTTL: 2 * time.Second}) {
			assert.GreaterOrEqual(t, g, 1900*time.Millisecond, "TTL 1 s raised to MinTTL 2 s")
			assert.Less(t, g, 3500*time.Millisecond)
		}
	})
}

func TestDNSKeepsLastGood(t *testing.T) {
	k := startKnot(t, "example.test.", testZone)
	src, err := NewDNS(DNSConfig{Name: "web.example.test", Type: "A", Port: 80, Servers: []string{k.addr}, MinTTL: 100 * time.Millisecond, MaxTTL: 200 * time.Millisecond, Timeout: time.Second})
	require.NoError(t, err)
	sink := watchDNS(t, src)
	assert.Equal(t, []string{"198.18.0.1:80", "198.18.0.2:80"}, addrsOf(sink.nextSet(t, 5*time.Second)))

	// Every A record deleted: no data is a failure, not an empty set.
	k.update([]string{"web.example.test. 1 IN A 198.18.0.1", "web.example.test. 1 IN A 198.18.0.2"}, nil)
	for {
		select {
		case <-sink.sets: // look-ups before the update reached the server
			continue
		case err := <-sink.errs:
			if !errors.Is(err, ErrNoRecords) {
				t.Logf("a look-up failed on its own (a loaded machine): %v", err)
				continue
			}
			assert.ErrorContains(t, err, "A web.example.test.")
		case <-time.After(5 * time.Second):
			t.Fatal("no failure reported for an empty answer")
		}
		break
	}

	// The server goes away: failures, no set.
	k.stop()
	err = sink.nextErr(t, 5*time.Second)
	for errors.Is(err, ErrNoRecords) { // a look-up that ended before the stop
		err = sink.nextErr(t, 5*time.Second)
	}
	assert.ErrorContains(t, err, "discovery: dns A web.example.test.: "+k.addr)
	assert.Error(t, sink.nextErr(t, 5*time.Second), "it keeps trying")
	assert.Empty(t, sink.sets, "a failing source reports no set")

	// Back with the zone file: the members return.
	k.start()
	for {
		select {
		case <-sink.errs:
			continue
		case set := <-sink.sets:
			assert.Equal(t, []string{"198.18.0.1:80", "198.18.0.2:80"}, addrsOf(set))
		case <-time.After(10 * time.Second):
			t.Fatal("no set after the server came back")
		}
		break
	}
}

func TestDNSAllowEmpty(t *testing.T) {
	k := startKnot(t, "example.test.", testZone)
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing answers there: the next server is asked
	src, err := NewDNS(DNSConfig{Name: "gone.example.test", Port: 80, Servers: []string{dead, k.addr}, Timeout: 300 * time.Millisecond, AllowEmpty: true})
	require.NoError(t, err)
	set, ttl, err := src.Lookup(t.Context())
	require.NoError(t, err)
	assert.Empty(t, set)
	assert.Equal(t, time.Second, ttl, "NXDOMAIN: the zone's negative TTL (SOA minimum 1)")
	sink := watchDNS(t, src)
	assert.Equal(t, []balancer.Backend{}, sink.nextSet(t, 5*time.Second), "AllowEmpty: an empty answer is reported as an empty set")
}

func TestNewDNSValidates(t *testing.T) {
	for _, tt := range []struct {
		cfg DNSConfig
		err string
	}{
		{DNSConfig{}, "Name is required"},
		{DNSConfig{Name: "web.example.test", Servers: []string{"127.0.0.1"}}, "Port is required"},
		{DNSConfig{Name: "_h._tcp.example.test", Type: "SRV", Port: 80, Servers: []string{"127.0.0.1"}}, "Port must be 0"},
		{DNSConfig{Name: "web.example.test", Type: "MX", Servers: []string{"127.0.0.1"}}, `type "MX"`},
		{DNSConfig{Name: "web.example.test", Port: 80, Servers: []string{"ns.example.test"}}, "is not IP or IP:port"},
		{DNSConfig{Name: "web.example.test", Port: 80, Servers: []string{"127.0.0.1"}, MinTTL: time.Minute, MaxTTL: time.Second}, "below MinTTL"},
	} {
		_, err := NewDNS(tt.cfg)
		assert.ErrorContains(t, err, tt.err)
	}
	d, err := NewDNS(DNSConfig{Name: "web.example.test", Port: 80, Servers: []string{"127.0.0.1", "[::1]:5353"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:53", "[::1]:5353"}, d.servers)
	assert.Equal(t, "dns A/AAAA web.example.test.", d.String())
}
