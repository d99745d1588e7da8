package dnsprobe

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const probeTimeout = 5 * time.Second

func probeCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func addrOf(t *testing.T, a net.Addr) netip.AddrPort {
	ap, err := netip.ParseAddrPort(a.String())
	require.NoError(t, err)
	return ap
}

func closedPort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a := addrOf(t, ln.Addr())
	require.NoError(t, ln.Close())
	return a
}

// dnsServer starts an in-process authoritative server on 127.0.0.1:0 for
// net, answering "svc.example." A and nothing else.
func dnsServer(t *testing.T, network string) netip.AddrPort {
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		switch {
		case q.Name == "svc.example." && q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR("svc.example. 30 IN A 198.18.0.10")
			m.Answer = append(m.Answer, rr)
		case q.Name == "svc.example.":
			// NODATA
		case dns.IsSubDomain("example.", q.Name):
			m.Rcode = dns.RcodeNameError
		default:
			m.Rcode = dns.RcodeRefused
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{Net: network, Handler: handler, NotifyStartedFunc: func() { close(started) }}
	var a netip.AddrPort
	switch network {
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		srv.PacketConn = pc
		a = addrOf(t, pc.LocalAddr())
	default:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv.Listener = ln
		a = addrOf(t, ln.Addr())
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return a
}

func TestDNSProbe(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		a := dnsServer(t, network)
		for _, tc := range []struct {
			name    string
			probe   Query
			wantErr string
		}{
			{name: "answer", probe: Query{Name: "svc.example", WantAnswer: true}},
			{name: "nodata passes without WantAnswer", probe: Query{Name: "svc.example", Type: dns.TypeAAAA}},
			{name: "nodata fails with WantAnswer", probe: Query{Name: "svc.example", Type: dns.TypeAAAA, WantAnswer: true}, wantErr: "no answer"},
			{name: "nxdomain", probe: Query{Name: "nope.example."}, wantErr: "rcode NXDOMAIN"},
			{name: "want nxdomain", probe: Query{Name: "nope.example.", WantRcode: dns.RcodeNameError}},
			{name: "refused", probe: Query{Name: "elsewhere.test."}, wantErr: "rcode REFUSED"},
			{name: "name required", probe: Query{}, wantErr: "Name is required"},
			{name: "bad network", probe: Query{Name: "svc.example", Net: "sctp"}, wantErr: "unknown network"},
		} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				p := tc.probe
				if p.Net == "" {
					p.Net = network
				}
				_, err := p.Probe(probeCtx(t, probeTimeout), a)
				if tc.wantErr == "" {
					require.NoError(t, err)
					return
				}
				require.ErrorContains(t, err, tc.wantErr)
			})
		}
	}
	t.Run("no server", func(t *testing.T) {
		_, err := Query{Name: "svc.example", Net: "tcp"}.Probe(probeCtx(t, probeTimeout), closedPort(t))
		assert.ErrorContains(t, err, "refused")
	})
}
