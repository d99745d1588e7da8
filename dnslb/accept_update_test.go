package dnslb

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAcceptUpdate drives the server's pool with RFC 2136 updates sent by
// an Updater (so each side is tested against the other as well as against
// Knot).
func TestAcceptUpdate(t *testing.T) {
	served := newPool(t, nil, be("198.18.0.1:8080"))
	closed := newPool(t, nil, be("198.18.0.50:80"))
	_, addr := startServer(t, Config{
		Services: []Service{
			{Name: "svc.example.test.", Pool: served, UpdatePort: 8080},
			{Name: "closed.example.test.", Pool: closed},
		},
		UpdateKeys: []TSIGKey{{Name: "lbkit", Secret: testKeySecret}},
		Logger:     quiet,
	})
	source := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"), be("[2001:db8::2]:80"))
	u := testUpdater(t, addr, source, lbkitKey)
	ctx := context.Background()

	require.NoError(t, u.Sync(ctx))
	members := func() []string {
		var out []string
		for _, ep := range served.Endpoints() {
			out = append(out, ep.Addr().String())
		}
		return sorted(out)
	}
	assert.Equal(t, []string{"198.18.0.1:8080", "198.18.0.2:8080"}, members(), "A records became backends at UpdatePort")
	assert.ElementsMatch(t, []string{"198.18.0.1", "198.18.0.2"}, addrs(ask(t, addr, "udp", "svc.example.test.", dns.TypeA)))

	source.SetHealthy(netip.MustParseAddrPort("198.18.0.1:80"), false)
	require.NoError(t, u.Sync(ctx))
	assert.Equal(t, []string{"198.18.0.2:8080"}, members())
	require.NoError(t, u.Sync(ctx), "in step: nothing to send")

	t.Run("rejected", func(t *testing.T) {
		tests := []struct {
			name string
			key  TSIGKey
			svc  string
			want error
		}{
			{"unsigned", TSIGKey{}, "svc.example.test.", ErrNotAuth},
			{"wrong secret", TSIGKey{Name: "lbkit", Secret: "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}, "svc.example.test.", ErrBadSig},
			{"unknown key", TSIGKey{Name: "nobody", Secret: testKeySecret}, "svc.example.test.", ErrBadKey},
			{"service closed to updates", lbkitKey, "closed.example.test.", ErrRefused},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				src := newPool(t, nil, be("198.18.0.99:80"))
				u, err := NewUpdater(UpdaterConfig{Server: addr, Zone: "example.test.", Name: tc.svc, Pool: src, Key: tc.key, Logger: quiet})
				require.NoError(t, err)
				err = u.Sync(ctx)
				assert.ErrorIs(t, err, tc.want)
				assert.Equal(t, []string{"198.18.0.2:8080"}, members(), "pool unchanged")
				assert.Len(t, closed.Endpoints(), 1)
			})
		}
	})

	t.Run("delete RRset and outside zone", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetUpdate("example.test.")
		m.RemoveRRset([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "svc.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET}}})
		m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
		c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{"lbkit.": testKeySecret}, Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, addr)
		require.NoError(t, err, "the reply is signed and verifies")
		assert.Equal(t, dns.RcodeSuccess, r.Rcode)
		assert.Empty(t, members())

		m = new(dns.Msg)
		m.SetUpdate("example.test.")
		m.Insert([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "svc.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: netip.MustParseAddr("198.18.0.5").AsSlice()}})
		m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
		r, _, err = c.Exchange(m, addr)
		require.NoError(t, err)
		assert.Equal(t, dns.RcodeNotZone, r.Rcode)

		m = new(dns.Msg)
		m.SetUpdate("example.org.")
		m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
		r, _, _ = c.Exchange(m, addr) // miekg/dns reports every NOTAUTH as an authentication error
		require.NotNil(t, r)
		assert.Equal(t, dns.RcodeNotAuth, r.Rcode, "not our zone")
	})
}
