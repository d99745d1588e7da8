package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/testnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backends starts n HTTP backends answering their own name.
func backends(t *testing.T, n int) []string {
	var addrs []string
	for i := range n {
		name := fmt.Sprintf("b%d", i+1)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
		t.Cleanup(srv.Close)
		addrs = append(addrs, srv.Listener.Addr().String())
	}
	return addrs
}

type fixture struct {
	t                *testing.T
	d                *Daemon
	be               []string
	tcpAddr, dnsAddr string
	adminAddr        string
	tcpAddr2         string
}

func (f *fixture) config(members []string, tcpAddr string, extra string) *config.Config {
	var b strings.Builder
	fmt.Fprintf(&b, "admin: {addr: %s}\nshutdown_timeout: 2s\npools:\n  - name: web\n    policy: maglev\n    key: client\n    members:\n", f.adminAddr)
	for _, m := range members {
		fmt.Fprintf(&b, "      - addr: %s\n", m)
	}
	fmt.Fprintf(&b, "    health: {type: http, path: /, interval: 100ms, timeout: 1s}\n%s", extra)
	fmt.Fprintf(&b, "listeners:\n  - {name: tcp, type: tcp, addr: %s, pool: web}\n", tcpAddr)
	fmt.Fprintf(&b, `  - name: dns
    type: dns
    addr: %s
    zones:
      - origin: example.test.
        records: |
          @ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300
          @ 3600 IN NS ns1
          ns1 3600 IN A 127.0.0.1
    services:
      - {name: www.example.test., pool: web}
`, f.dnsAddr)
	cfg, err := config.Parse("test.yaml", []byte(b.String()))
	require.NoError(f.t, err)
	return cfg
}

func newFixture(t *testing.T) *fixture {
	free := testnet.FreeAddrs(t, 4)
	f := &fixture{t: t, be: backends(t, 3), tcpAddr: free[0], dnsAddr: free[1], adminAddr: free[2], tcpAddr2: free[3]}
	f.d = New(Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, f.d.Start(f.config(f.be[:2], f.tcpAddr, "")))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f.d.Shutdown(ctx)
	})
	f.waitReady(2)
	return f
}

func (f *fixture) waitReady(n int) {
	f.t.Helper()
	p := f.d.Pool("web")
	require.NotNil(f.t, p)
	deadline := time.After(10 * time.Second)
	for {
		s := p.Snapshot()
		if len(s.Ready) == n {
			return
		}
		select {
		case <-s.Changed():
		case <-deadline:
			f.t.Fatalf("pool web has %d ready members, want %d", len(s.Ready), n)
		}
	}
}

func get(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func lookup(t *testing.T, addr string) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeSRV)
	r, err := dns.Exchange(m, addr)
	require.NoError(t, err)
	var out []string
	for _, rr := range r.Answer {
		if srv, ok := rr.(*dns.SRV); ok {
			out = append(out, fmt.Sprintf("%s:%d", srv.Target, srv.Port))
		}
	}
	return out
}

func (f *fixture) status() Status {
	resp, err := http.Get("http://" + f.adminAddr + "/status")
	require.NoError(f.t, err)
	defer resp.Body.Close()
	var st Status
	require.NoError(f.t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

func TestDaemonServesAndReloadsAsADiff(t *testing.T) {
	f := newFixture(t)
	assert.Contains(t, []string{"b1", "b2"}, get(t, f.tcpAddr))
	assert.Len(t, lookup(t, f.dnsAddr), 2)

	p := f.d.Pool("web")
	ap, _ := netip.ParseAddrPort(f.be[0])
	kept := p.Endpoint(ap)
	// The TCP proxy ends its connection's work when it sees the close,
	// a moment after the client's.
	for deadline := time.Now().Add(5 * time.Second); kept.InFlight() != 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	kept.Start() // work in flight survives the reload
	defer kept.Done(nil, 0)

	// A member joins: the same pool and endpoints, a third member probed
	// and served.
	require.NoError(t, f.d.Apply(f.config(f.be, f.tcpAddr, ""), "test"))
	assert.Same(t, p, f.d.Pool("web"), "an unchanged pool is kept")
	assert.Same(t, kept, p.Endpoint(ap), "a kept member keeps its state")
	assert.EqualValues(t, 1, kept.InFlight())
	f.waitReady(3)
	assert.Len(t, lookup(t, f.dnsAddr), 3, "the DNS listener follows the pool with no other call")

	// A policy change keeps the pool and its members too.
	require.NoError(t, f.d.Apply(f.config(f.be, f.tcpAddr, "    slow_start: 1s\n"), "test"))
	assert.Same(t, kept, f.d.Pool("web").Endpoint(ap))

	// A reload that cannot apply (the TCP listener moves to a port in
	// use) is rejected; the running configuration keeps serving.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	err = f.d.Apply(f.config(f.be, busy.Addr().String(), ""), "test")
	require.Error(t, err)
	st := f.status()
	assert.False(t, st.LastReloadOK)
	assert.Contains(t, st.LastReloadError, busy.Addr().String())
	assert.EqualValues(t, 3, st.Revision)
	assert.Contains(t, []string{"b1", "b2", "b3"}, get(t, f.tcpAddr), "old listener still serves")

	// The listener moves to a free port: the new one serves, the old one
	// drains.
	require.NoError(t, f.d.Apply(f.config(f.be, f.tcpAddr2, ""), "test"))
	assert.Contains(t, []string{"b1", "b2", "b3"}, get(t, f.tcpAddr2))
	st = f.status()
	assert.True(t, st.LastReloadOK)
	require.Len(t, st.Pools, 1)
	assert.Equal(t, "maglev", st.Pools[0].Policy)
	assert.Equal(t, 3, st.Pools[0].Ready)
	require.Len(t, st.Pools[0].Members, 3)
	assert.Equal(t, balancer.Healthy, st.Pools[0].Members[0].Health)
	require.NotNil(t, st.Pools[0].Members[0].Check)
	assert.Equal(t, "probe", st.Pools[0].Members[0].Check.Reason)
}

// Drain through the admin endpoint takes a member out of new picks while
// its open work finishes; a config that changes the member clears it.
func TestAdminDrain(t *testing.T) {
	f := newFixture(t)
	ap, _ := netip.ParseAddrPort(f.be[0])
	ep := f.d.Pool("web").Endpoint(ap)
	ep.Start() // an open connection
	resp, err := http.Post("http://"+f.adminAddr+"/pools/web/members/"+f.be[0]+"/drain", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	f.waitReady(1)
	for range 20 {
		assert.Equal(t, "b2", get(t, f.tcpAddr))
	}
	assert.Len(t, lookup(t, f.dnsAddr), 1)
	assert.EqualValues(t, 1, ep.InFlight(), "open work is not cut")
	ep.Done(nil, 0)
	st := f.status()
	require.NotNil(t, st.Pools[0].Members[0].Override)
	assert.True(t, st.Pools[0].Members[0].Override.Drain)

	for _, bad := range []string{"/pools/nope/members/" + f.be[0] + "/drain", "/pools/web/members/127.0.0.1:1/drain"} {
		resp, err := http.Post("http://"+f.adminAddr+bad, "", nil)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, bad)
	}
	resp, err = http.Post("http://"+f.adminAddr+"/pools/web/members/"+f.be[1]+"/weight?value=x", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// A reload that leaves the member alone keeps the drain.
	require.NoError(t, f.d.Apply(f.config(f.be[:2], f.tcpAddr, "    slow_start: 1s\n"), "test"))
	assert.True(t, f.d.Pool("web").Endpoint(ap).Draining())
	resp, err = http.Post("http://"+f.adminAddr+"/pools/web/members/"+f.be[0]+"/undrain", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	f.waitReady(2)

	// The HTML page renders.
	req, _ := http.NewRequest("GET", "http://"+f.adminAddr+"/status", nil)
	req.Header.Set("Accept", "text/html")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(body), "<h2>Pool web</h2>")
}

func TestAdminToken(t *testing.T) {
	h := AdminHandler(New(Options{Logger: slog.New(slog.DiscardHandler)}), "s3cret")
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/status")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	req, _ := http.NewRequest("GET", srv.URL+"/status", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

// The configuration file is watched: a write (or an editor's
// rename-and-replace) reloads it; a broken file is rejected.
func TestWatchFile(t *testing.T) {
	be := backends(t, 2)
	free := testnet.FreeAddrs(t, 2)
	dir := t.TempDir()
	file := dir + "/lbkit.yaml"
	write := func(members ...string) {
		text := "pools:\n  - name: web\n    members:\n"
		for _, m := range members {
			text += "      - addr: " + m + "\n"
		}
		text += fmt.Sprintf("listeners:\n  - {name: tcp, type: tcp, addr: %s, pool: web}\n", free[0])
		tmp := file + ".tmp"
		require.NoError(t, os.WriteFile(tmp, []byte(text), 0o644))
		require.NoError(t, os.Rename(tmp, file))
	}
	write(be[0])
	cfg, err := config.Load(file)
	require.NoError(t, err)
	d := New(Options{ConfigFile: file, AdminAddr: "off", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, d.Start(cfg))
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.WatchFile(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	waitRev := func(n int) ReloadStatus {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if st := d.Status(); len(st.Reloads) >= n {
				return st.Reloads[n-1]
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("no reload %d", n)
		return ReloadStatus{}
	}
	time.Sleep(100 * time.Millisecond) // the watch is set up
	write(be[0], be[1])
	r := waitRev(2)
	assert.True(t, r.OK)
	assert.Equal(t, "file", r.Trigger)
	assert.Equal(t, 2, d.Pool("web").Len())
	require.NoError(t, os.WriteFile(file, []byte("pools: [\n"), 0o644))
	r = waitRev(3)
	assert.False(t, r.OK)
	assert.Equal(t, 2, d.Pool("web").Len(), "a broken file changes nothing")
}

// SIGUSR1's reopen moves the access log to a new file after rotation.
func TestAccessLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/access.log"
	a, err := openAccessLog(path, true)
	require.NoError(t, err)
	defer a.Close()
	a.Log(Entry{Time: time.Unix(0, 0).UTC(), Client: "198.18.0.1:5000", Listener: "proxy", Pool: "web", Upstream: "198.18.0.10:80",
		Method: "GET", Target: "/x", Proto: "HTTP/1.1", Status: 200, Bytes: 5, Duration: time.Millisecond, UserAgent: "curl"})
	require.NoError(t, os.Rename(path, path+".1"))
	require.NoError(t, a.Reopen())
	a.Log(Entry{Time: time.Unix(0, 0).UTC(), Listener: "tcp", Pool: "web"})
	old, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	assert.Equal(t, `198.18.0.1:5000 - - [01/Jan/1970:00:00:00 +0000] "GET /x HTTP/1.1" 200 5 "-" "curl" listener=proxy pool=web upstream=198.18.0.10:80 duration=0.001000 retries=0`+"\n", string(old))
	cur, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Contains(t, string(cur), `listener=tcp pool=web`)
}
