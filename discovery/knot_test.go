package discovery

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/knottest"
)

// The DNS source's tests run against a real Knot DNS server (package
// knottest), updated with RFC 2136 during the tests.

// testKeySecret is the TSIG secret of the Knot servers the tests start.
const testKeySecret = knottest.KeySecret

// knotServer is a knotd the test started (see package knottest).
type knotServer struct {
	*knottest.Server
	t      testing.TB
	addr   string
	origin string
}

func freePort(t testing.TB) int { return knottest.FreePort(t) }

func startKnot(t testing.TB, origin, zoneText string) *knotServer {
	t.Helper()
	s := knottest.Start(t, origin, zoneText)
	return &knotServer{Server: s, t: t, addr: s.Addr(), origin: origin}
}

func (k *knotServer) stop()  { k.Stop() }
func (k *knotServer) start() { k.Start() }

// update sends one RFC 2136 UPDATE signed with the test key: the records
// of remove are deleted, then those of insert added (zone-file text).
func (k *knotServer) update(remove, insert []string) {
	k.t.Helper()
	rrs := func(texts []string) []dns.RR {
		var out []dns.RR
		for _, s := range texts {
			rr, err := dns.NewRR(s)
			require.NoError(k.t, err, s)
			out = append(out, rr)
		}
		return out
	}
	m := new(dns.Msg)
	m.SetUpdate(k.origin)
	if len(remove) > 0 {
		m.Remove(rrs(remove))
	}
	if len(insert) > 0 {
		m.Insert(rrs(insert))
	}
	m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{"lbkit.": testKeySecret}, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, k.addr)
	require.NoError(k.t, err)
	require.Equal(k.t, dns.RcodeSuccess, r.Rcode, "update refused: %s", dns.RcodeToString[r.Rcode])
}
