package dnslb

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/knottest"
)

// testKeySecret is the TSIG secret of the Knot servers the tests start.
const testKeySecret = knottest.KeySecret

// knotServer is a knotd the test started (see package knottest).
type knotServer struct {
	*knottest.Server
	t      testing.TB
	addr   string
	origin string
}

func knotdPath(t testing.TB) string { return knottest.Path(t) }
func knotUser() string              { return knottest.UserLine() }
func freePort(t testing.TB) int     { return knottest.FreePort(t) }

func startKnot(t testing.TB, origin, zoneText string) *knotServer {
	t.Helper()
	s := knottest.Start(t, origin, zoneText)
	return &knotServer{Server: s, t: t, addr: s.Addr(), origin: origin}
}

// restart stops knotd, resets the zone file to text and starts it again.
func (k *knotServer) restart(text string) { k.Restart(text) }

// lookup returns the sorted addresses knot answers for name and type, and
// the zone's SOA serial.
func (k *knotServer) lookup(name string, qtype uint16) ([]string, uint32) {
	k.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.ExchangeContext(context.Background(), m, k.addr)
	require.NoError(k.t, err)
	out := addrs(r)
	slices.Sort(out)
	m.SetQuestion(k.origin, dns.TypeSOA)
	r, _, err = c.ExchangeContext(context.Background(), m, k.addr)
	require.NoError(k.t, err)
	require.Len(k.t, r.Answer, 1)
	return out, r.Answer[0].(*dns.SOA).Serial
}
