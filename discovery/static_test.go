package discovery

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/testlog"
)

// hostsServer is a DNS server on loopback answering A queries from a map
// the test changes; a name mapped to nil answers SERVFAIL.
type hostsServer struct {
	mu    sync.Mutex
	hosts map[string][]string
	addr  string
}

func startHostsServer(t *testing.T, hosts map[string][]string) *hostsServer {
	t.Helper()
	h := &hostsServer{hosts: hosts}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	h.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return h
}

func (h *hostsServer) set(name string, ips ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hosts[name] = ips
}

func (h *hostsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	h.mu.Lock()
	ips, ok := h.hosts[q.Name]
	h.mu.Unlock()
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case ips == nil:
		m.Rcode = dns.RcodeServerFailure
	case q.Qtype == dns.TypeA:
		for _, ip := range ips {
			rr, _ := dns.NewRR(q.Name + " 1 IN A " + ip)
			m.Answer = append(m.Answer, rr)
		}
	}
	w.WriteMsg(m)
}

// resolver returns a Go resolver that asks h only.
func (h *hostsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", h.addr)
	}}
}

func TestStaticResolvesHostNames(t *testing.T) {
	dnsSrv := startHostsServer(t, map[string][]string{"web-1.example.test.": {"198.18.0.1"}})
	src, err := NewStatic(StaticConfig{
		Members: []Member{
			{Addr: "localhost:9101"},
			{Addr: "web-1.example.test:80", Weight: 3, Meta: map[string]string{"url": "http://web-1.example.test"}},
			{Addr: "198.18.0.9:80"},
		},
		Interval: 50 * time.Millisecond,
		Network:  "ip4",
		Resolver: dnsSrv.resolver(),
	})
	require.NoError(t, err)
	pool := newPool(t, "web")
	var logs testlog.Buffer
	stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{src}, Logger: logs.Logger()})
	defer stop()

	waitMembers(t, pool, 5*time.Second, "127.0.0.1:9101", "198.18.0.1:80", "198.18.0.9:80")
	ep := pool.Endpoint(ap("198.18.0.1:80"))
	assert.Equal(t, uint32(3), ep.Backend().Weight)
	assert.Equal(t, "http://web-1.example.test", ep.Meta("url"))

	// The name's records change: re-resolved on the interval, one member
	// per address.
	dnsSrv.set("web-1.example.test.", "198.18.0.3", "198.18.0.2")
	waitMembers(t, pool, 5*time.Second, "127.0.0.1:9101", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.9:80")

	// The name stops resolving: its last addresses stay.
	dnsSrv.set("web-1.example.test.", nil...)
	logs.WaitFor(t, `discovery: resolve \"web-1.example.test\"`, 5*time.Second)
	assert.Equal(t, []string{"127.0.0.1:9101", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.9:80"}, members(pool))

	dnsSrv.set("web-1.example.test.", "198.18.0.4")
	waitMembers(t, pool, 5*time.Second, "127.0.0.1:9101", "198.18.0.4:80", "198.18.0.9:80")
	logs.WaitFor(t, "discovery: source recovered", 5*time.Second)
}

func TestStaticLiteralsOnly(t *testing.T) {
	src, err := NewStatic(StaticConfig{Members: []Member{{Addr: "[::ffff:198.18.0.1]:80"}, {Addr: "[2001:db8::1]:443", Zone: "b"}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	sink := newRecSink(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, sink) }()
	set := sink.nextSet(t, time.Second)
	assert.Equal(t, []string{"198.18.0.1:80", "[2001:db8::1]:443"}, addrsOf(set), "IPv4-mapped addresses are unmapped")
	assert.Equal(t, "b", set[1].Zone)
	cancel()
	require.NoError(t, <-done)
	assert.Empty(t, sink.sets, "literals are reported once")
}

func TestParseMember(t *testing.T) {
	for _, tt := range []struct {
		addr string
		host string
		ip   netip.Addr
		port uint16
		err  string
	}{
		{addr: "198.18.0.1:80", ip: netip.MustParseAddr("198.18.0.1"), port: 80},
		{addr: "localhost:9101", host: "localhost", port: 9101},
		{addr: "web-1.example.test.:80", host: "web-1.example.test", port: 80},
		{addr: "198.18.0.1", err: "expected IP:port or host:port"},
		{addr: "web:0", err: "port 0: expected 1 to 65535"},
		{addr: "web:65536", err: "port 65536: expected 1 to 65535"},
		{addr: "-x/y:80", err: "expected an IP address or a DNS name"},
		{addr: ":80", err: "expected an IP address or a DNS name"},
		{addr: "-web:80", err: "expected an IP address or a DNS name"},
		{addr: "10.0.0:80", err: "not an IP address"},
	} {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := parseMember(Member{Addr: tt.addr})
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.host, got.Host)
			assert.Equal(t, tt.ip, got.IP)
			assert.Equal(t, tt.port, got.Port)
		})
	}
	_, err := NewStatic(StaticConfig{Network: "ipx"})
	assert.ErrorContains(t, err, "discovery: network")
}
