package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/etcdtest"
)

// waitMembers waits, on the pool's snapshot notifications, until the
// pool's members are want (in any order), and returns its endpoints.
func waitMembers(t *testing.T, p *balancer.Pool, want ...string) map[string]*balancer.Endpoint {
	t.Helper()
	slices.Sort(want)
	deadline := time.After(15 * time.Second)
	for {
		s := p.Snapshot()
		got := make(map[string]*balancer.Endpoint, len(s.Members))
		var addrs []string
		for _, ep := range s.Members {
			a := ep.Backend().Addr.String()
			got[a] = ep
			addrs = append(addrs, a)
		}
		slices.Sort(addrs)
		if slices.Equal(addrs, want) {
			return got
		}
		select {
		case <-s.Changed():
		case <-deadline:
			t.Fatalf("pool %s has members %v, want %v", p.Name(), addrs, want)
		}
	}
}

// writeMembers writes a members file atomically, as deployment tools do.
func writeMembers(t *testing.T, path string, addrs ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("[]\n")
	if len(addrs) > 0 {
		b.Reset()
		for _, a := range addrs {
			fmt.Fprintf(&b, "- addr: %s\n", a)
		}
	}
	require.NoError(t, os.WriteFile(path+".tmp", []byte(b.String()), 0o644))
	require.NoError(t, os.Rename(path+".tmp", path))
}

// TestPoolMembersFromDiscovery: a pool whose members come from a file and
// from a member named by host runs a discovery loop for its lifetime;
// changes of the file reach the pool; a reload that changes the source
// restarts the loop keeping the members that stay (same endpoints); a
// reload back to static IP members stops the loop; Close stops it (the
// package's goleak check fails otherwise).
func TestPoolMembersFromDiscovery(t *testing.T) {
	be := backends(t, 3)
	_, port2, _ := strings.Cut(be[2], ":")
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeMembers(t, fileA, be[0])
	writeMembers(t, fileB, be[1])
	// What "localhost" gives here (127.0.0.1, and ::1 where it has it):
	// every address of a name is a member.
	ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", "localhost")
	require.NoError(t, err)
	var local []string
	for _, ip := range ips {
		local = append(local, netip.AddrPortFrom(ip.Unmap(), uint16(mustAtoi(t, port2))).String())
	}
	local = slices.Compact(slices.Sorted(slices.Values(local)))
	with := func(addrs ...string) []string { return append(slices.Clone(local), addrs...) }

	cfgText := func(pool string) *config.Config {
		text := "pools:\n" + pool + "    health: {type: none}\nlisteners: []\n"
		cfg, err := config.Parse(filepath.Join(dir, "lbkit.yaml"), []byte(text))
		require.NoError(t, err, text)
		return cfg
	}
	d := New(Options{AdminAddr: "off"})
	t.Cleanup(func() { d.Close() })
	require.NoError(t, d.Start(cfgText(fmt.Sprintf(
		"  - name: web\n    members: [{addr: 'localhost:%s'}]\n    discovery: {interval: 1s, file: {path: a.yaml}}\n", port2))))
	p := d.Pool("web")
	require.NotNil(t, p)
	eps := waitMembers(t, p, with(be[0])...)

	writeMembers(t, fileA, be[0], be[1])
	waitMembers(t, p, with(be[0], be[1])...)
	writeMembers(t, fileA, be[1])
	waitMembers(t, p, with(be[1])...)
	st := d.Status()
	require.Len(t, st.Pools, 1)
	require.Len(t, st.Pools[0].Discovery, 2, "/status lists the pool's sources")
	assert.Equal(t, 1, st.Pools[0].Discovery[1].Members)

	// Another file: the loop restarts; the member that stays keeps its
	// endpoint (and so its health, in-flight count and EWMA).
	require.NoError(t, d.Apply(cfgText(fmt.Sprintf(
		"  - name: web\n    members: [{addr: 'localhost:%s'}]\n    discovery: {file: {path: b.yaml}}\n", port2)), "test"))
	writeMembers(t, fileA, be[0]) // the old loop no longer listens
	now := waitMembers(t, p, with(be[1])...)
	assert.Same(t, eps[local[0]], now[local[0]])

	// Static IP members only: no loop, the members set at once.
	require.NoError(t, d.Apply(cfgText(fmt.Sprintf("  - name: web\n    members: [{addr: '%s'}]\n", be[0])), "test"))
	waitMembers(t, p, be[0])
	assert.Empty(t, d.Status().Pools[0].Discovery)
	writeMembers(t, fileB, be[2])
	require.Len(t, p.Snapshot().Members, 1)
	assert.Equal(t, netip.MustParseAddrPort(be[0]), p.Snapshot().Members[0].Backend().Addr)
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// TestPoolMembersFromEtcdAndDNS: the dns and etcd sources of a pool's
// discovery section reach the pool: members registered under the etcd
// prefix (and removed), and the A records of a name on a DNS server, with
// the configured port.
func TestPoolMembersFromEtcdAndDNS(t *testing.T) {
	c := etcdtest.Client(t, etcdtest.Start(t))
	dnsAddr := testDNSServer(t, "web.example.test.", "198.18.0.21", "198.18.0.22")

	text := fmt.Sprintf(`pools:
  - name: web
    discovery:
      dns: {name: web.example.test, type: A, port: 8080, servers: ['%s'], min_ttl: 1s}
      etcd: {endpoints: ['%s'], prefix: /pools/web/}
    health: {type: none}
listeners: []
`, dnsAddr, c.Endpoints()[0])
	cfg, err := config.Parse("lbkit.yaml", []byte(text))
	require.NoError(t, err)
	d := New(Options{AdminAddr: "off"})
	t.Cleanup(func() { d.Close() })
	_, err = c.Put(t.Context(), "/pools/web/a", `{"addr": "198.18.0.31:80", "weight": 2}`)
	require.NoError(t, err)
	require.NoError(t, d.Start(cfg))
	p := d.Pool("web")
	eps := waitMembers(t, p, "198.18.0.21:8080", "198.18.0.22:8080", "198.18.0.31:80")
	assert.EqualValues(t, 2, eps["198.18.0.31:80"].Backend().Weight)

	_, err = c.Put(t.Context(), "/pools/web/b", `{"addr": "198.18.0.32:80"}`)
	require.NoError(t, err)
	waitMembers(t, p, "198.18.0.21:8080", "198.18.0.22:8080", "198.18.0.31:80", "198.18.0.32:80")
	_, err = c.Delete(t.Context(), "/pools/web/a")
	require.NoError(t, err)
	waitMembers(t, p, "198.18.0.21:8080", "198.18.0.22:8080", "198.18.0.32:80")
}

// testDNSServer serves A records of name on a UDP port of 127.0.0.1 and
// returns its address.
func testDNSServer(t *testing.T, name string, ips ...string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	mux := dns.NewServeMux()
	mux.HandleFunc(name, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if r.Question[0].Qtype == dns.TypeA {
			for _, ip := range ips {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
					A:   net.ParseIP(ip),
				})
			}
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}
