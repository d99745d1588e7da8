package dnslb

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const knotZone = `$ORIGIN example.test.
$TTL 60
@   IN SOA ns1 hostmaster 1 3600 600 86400 60
@   IN NS  ns1
ns1 IN A   127.0.0.1
; a record another tool keeps at the service name, and one of ours
; (198.18.0.3) left from an earlier run
svc IN A   198.18.99.99
svc IN A   198.18.0.3
`

func testUpdater(t testing.TB, server string, pool *balancer.Pool, key TSIGKey) *Updater {
	t.Helper()
	u, err := NewUpdater(UpdaterConfig{
		Server: server, Zone: "example.test.", Name: "svc.example.test.", Pool: pool, Key: key,
		Interval: 200 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: quiet,
	})
	require.NoError(t, err)
	return u
}

var quiet = slog.New(slog.DiscardHandler)

var lbkitKey = TSIGKey{Name: "lbkit", Secret: testKeySecret}

func TestUpdaterKnot(t *testing.T) {
	k := startKnot(t, "example.test.", knotZone)
	a1, a2, a3 := netip.MustParseAddrPort("198.18.0.1:80"), netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("198.18.0.3:80")
	pool := newPool(t, nil, be(a1.String()), be(a2.String()), be(a3.String()))
	ctx := context.Background()
	for _, netw := range []string{"udp", "tcp"} {
		t.Run(netw, func(t *testing.T) {
			u := testUpdater(t, k.addr, pool, lbkitKey)
			u.cfg.Net = netw
			require.NoError(t, pool.Set([]balancer.Backend{be(a1.String()), be(a2.String()), be(a3.String())}))
			for _, a := range []netip.AddrPort{a1, a2, a3} {
				pool.SetHealthy(a, true)
				pool.SetDraining(a, false)
			}
			require.NoError(t, u.Sync(ctx))
			_, serial := k.lookup("svc.example.test.", dns.TypeA)

			steps := []struct {
				name   string
				change func()
				want   []string
				bump   bool // one UPDATE, so the serial grows by one
			}{
				{"in step", func() {}, []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.99.99"}, false},
				{"backend dies", func() { pool.SetHealthy(a2, false) }, []string{"198.18.0.1", "198.18.0.3", "198.18.99.99"}, true},
				{"backend recovers", func() { pool.SetHealthy(a2, true) }, []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.99.99"}, true},
				{"two change at once: one update", func() { pool.SetDraining(a1, true); pool.SetHealthy(a3, false) }, []string{"198.18.0.2", "198.18.99.99"}, true},
				{"removed member is still ours to delete", func() {
					pool.SetDraining(a1, false)
					pool.SetHealthy(a3, true)
					pool.Remove(a3)
				}, []string{"198.18.0.1", "198.18.0.2", "198.18.99.99"}, true},
				{"nothing ready: every member (panic)", func() { pool.SetHealthy(a1, false); pool.SetHealthy(a2, false) }, []string{"198.18.0.1", "198.18.0.2", "198.18.99.99"}, false},
			}
			for _, st := range steps {
				st.change()
				require.NoError(t, u.Sync(ctx), st.name)
				got, s := k.lookup("svc.example.test.", dns.TypeA)
				assert.Equal(t, st.want, got, st.name)
				if st.bump {
					assert.Equal(t, serial+1, s, "%s: one UPDATE per pass", st.name)
				} else {
					assert.Equal(t, serial, s, "%s: no UPDATE when in step", st.name)
				}
				serial = s
			}
		})
	}

	t.Run("restart from the zone file", func(t *testing.T) {
		require.NoError(t, pool.Set([]balancer.Backend{be(a1.String()), be(a2.String())}))
		pool.SetHealthy(a1, true)
		pool.SetHealthy(a2, true)
		u := testUpdater(t, k.addr, pool, lbkitKey)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { assert.ErrorIs(t, u.Run(ctx), context.Canceled) })
		defer func() {
			cancel()
			wg.Wait()
		}()
		want := []string{"198.18.0.1", "198.18.0.2", "198.18.99.99"}
		inStep := func() bool {
			got, _ := k.lookup("svc.example.test.", dns.TypeA)
			return assert.ObjectsAreEqual(want, got)
		}
		require.Eventually(t, inStep, 20*time.Second, 20*time.Millisecond)
		k.restart(knotZone) // back to .99.99 and .3, serial 1
		// 198.18.0.3 was never a member of this updater's pool: not
		// ours, so it stays.
		want = []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.99.99"}
		require.Eventually(t, inStep, 20*time.Second, 20*time.Millisecond, "Run reconciles a restarted server")
		// And follows health while running.
		pool.SetHealthy(a1, false)
		want = []string{"198.18.0.2", "198.18.0.3", "198.18.99.99"}
		require.Eventually(t, inStep, 20*time.Second, 20*time.Millisecond)
	})

	t.Run("rejected", func(t *testing.T) {
		require.NoError(t, pool.Set([]balancer.Backend{be("198.18.0.7:80")}))
		before, serial := k.lookup("svc.example.test.", dns.TypeA)
		tests := []struct {
			name string
			key  TSIGKey
			want error
		}{
			{"wrong secret", TSIGKey{Name: "lbkit", Secret: "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}, ErrBadSig},
			{"unknown key", TSIGKey{Name: "nobody", Secret: testKeySecret}, ErrBadKey},
			// Knot answers BADKEY for a key it knows that no ACL allows.
			{"key without ACL", TSIGKey{Name: "other", Secret: "b3RoZXIta2V5LW90aGVyLXNlY3JldA=="}, ErrBadKey},
			{"unsigned", TSIGKey{}, ErrNotAuth},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				u := testUpdater(t, k.addr, pool, tc.key)
				err := u.Sync(context.Background())
				require.Error(t, err)
				assert.ErrorIs(t, err, tc.want)
				var re *RcodeError
				require.ErrorAs(t, err, &re)
				assert.Equal(t, "update", re.Op)
				assert.Contains(t, err.Error(), "dnslb: update: rcode")
				got, s := k.lookup("svc.example.test.", dns.TypeA)
				assert.Equal(t, before, got, "zone unchanged")
				assert.Equal(t, serial, s)
			})
		}
	})
}

// fakeServer is an in-memory primary for Run's timing tests.
type fakeServer struct {
	mu      sync.Mutex
	down    bool
	have    map[string]bool
	calls   []time.Duration
	start   time.Time
	updates int
}

func (f *fakeServer) exchange(_ context.Context, m *dns.Msg, _ string) (*dns.Msg, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, time.Since(f.start))
	if f.down {
		return nil, errors.New("connection refused")
	}
	r := new(dns.Msg)
	r.SetReply(m)
	if m.Opcode == dns.OpcodeUpdate {
		f.updates++
		for _, rr := range m.Ns {
			a := rr.(*dns.A).A.String()
			f.have[a] = rr.Header().Class == dns.ClassINET
		}
		return r, nil
	}
	for a, ok := range f.have {
		if ok {
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: netip.MustParseAddr(a).AsSlice()})
		}
	}
	return r, nil
}

func (f *fakeServer) records() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for a, ok := range f.have {
		if ok {
			out = append(out, a)
		}
	}
	return out
}

func TestUpdaterRunBackoffAndTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a1 := netip.MustParseAddrPort("198.18.0.1:80")
		pool := balancer.MustNew(balancer.Config{Builder: balancer.BuilderFunc(func(r []balancer.Weighted) balancer.Picker {
			return balancer.ErrPicker(balancer.ErrNoBackend)
		})})
		require.NoError(t, pool.Set([]balancer.Backend{be(a1.String()), be("198.18.0.2:80")}))
		f := &fakeServer{down: true, have: map[string]bool{}, start: time.Now()}
		u, err := NewUpdater(UpdaterConfig{Server: "192.0.2.1:53", Zone: "example.test.", Name: "svc.example.test.",
			Pool: pool, Interval: 30 * time.Second, MinBackoff: time.Second, MaxBackoff: 8 * time.Second, Logger: quiet})
		require.NoError(t, err)
		u.exchange = f.exchange
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- u.Run(ctx) }()

		// Unreachable: 1 s, 2 s, 4 s, 8 s, 8 s between attempts.
		time.Sleep(23*time.Second + time.Millisecond)
		synctest.Wait()
		f.mu.Lock()
		assert.Equal(t, []time.Duration{0, 1 * time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second, 23 * time.Second}, f.calls)
		f.down = false
		f.calls = nil
		f.mu.Unlock()

		time.Sleep(8 * time.Second) // next retry succeeds: read + one update
		synctest.Wait()
		assert.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2"}, f.records())
		assert.Equal(t, 1, f.updates)

		// A pool change syncs at once.
		pool.SetHealthy(a1, false)
		synctest.Wait()
		assert.ElementsMatch(t, []string{"198.18.0.2"}, f.records())
		assert.Equal(t, 2, f.updates)

		// Lost records come back at the next interval.
		f.mu.Lock()
		f.have = map[string]bool{}
		f.mu.Unlock()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		assert.ElementsMatch(t, []string{"198.18.0.2"}, f.records())
		assert.Equal(t, 3, f.updates)

		cancel()
		assert.ErrorIs(t, <-done, context.Canceled)
		pool.Close()
	})
}

func TestUpdaterConfigErrors(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	ok := UpdaterConfig{Server: "127.0.0.1:53", Zone: "example.test.", Name: "svc.example.test.", Pool: pool}
	tests := []struct {
		name string
		mod  func(*UpdaterConfig)
	}{
		{"no pool", func(c *UpdaterConfig) { c.Pool = nil }},
		{"bad server", func(c *UpdaterConfig) { c.Server = "nowhere" }},
		{"name outside zone", func(c *UpdaterConfig) { c.Name = "svc.other." }},
		{"type MX", func(c *UpdaterConfig) { c.Type = dns.TypeMX }},
		{"net quic", func(c *UpdaterConfig) { c.Net = "quic" }},
		{"key without secret", func(c *UpdaterConfig) { c.Key = TSIGKey{Name: "k"} }},
		{"backoff inverted", func(c *UpdaterConfig) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mod(&cfg)
			_, err := NewUpdater(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "dnslb: ")
		})
	}
	_, err := NewUpdater(ok)
	require.NoError(t, err)
}

func TestUpdaterLargeUpdateUsesTCP(t *testing.T) {
	var backends []balancer.Backend
	for i := range 60 {
		backends = append(backends, be(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(i + 1)}), 80).String()))
	}
	pool := newPool(t, nil, backends...)
	f := &fakeServer{have: map[string]bool{}, start: time.Now()}
	u := testUpdater(t, "192.0.2.1:53", pool, lbkitKey)
	var nets []string
	u.exchange = func(ctx context.Context, m *dns.Msg, netw string) (*dns.Msg, error) {
		nets = append(nets, netw)
		return f.exchange(ctx, m, netw)
	}
	require.NoError(t, u.Sync(context.Background()))
	assert.Equal(t, []string{"tcp", "tcp"}, nets, "read over TCP; a 60-record update does not fit 512 bytes")
	assert.Len(t, f.records(), 60)
	pool.SetHealthy(backends[0].Addr, false)
	nets = nil
	require.NoError(t, u.Sync(context.Background()))
	assert.Equal(t, []string{"tcp", "udp"}, nets, "a small update goes over UDP")
	assert.Len(t, f.records(), 59)
}
