package balancer_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want balancer.Key
		text string
	}{
		{"", balancer.Key{}, ""},
		{"none", balancer.Key{}, ""},
		{"client", balancer.Key{Source: balancer.KeyClient}, "client"},
		{"client/24", balancer.Key{Source: balancer.KeyClient, Bits4: 24}, "client/24"},
		{"client/24,56", balancer.Key{Source: balancer.KeyClient, Bits4: 24, Bits6: 56}, "client/24,56"},
		{"header:X-User", balancer.Key{Source: balancer.KeyHeader, Name: "X-User"}, "header:X-User"},
		{"cookie:sid", balancer.Key{Source: balancer.KeyCookie, Name: "sid"}, "cookie:sid"},
		{"path", balancer.Key{Source: balancer.KeyPath}, "path"},
		{"query:uid", balancer.Key{Source: balancer.KeyQuery, Name: "uid"}, "query:uid"},
		{"flow", balancer.Key{Source: balancer.KeyFlow}, "flow"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			k, err := balancer.ParseKey(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.want, k)
			assert.Equal(t, tc.text, k.String())
			back, err := balancer.ParseKey(k.String())
			require.NoError(t, err)
			assert.Equal(t, k, back, "round trip")
		})
	}
	for _, bad := range []string{"client/0", "client/33", "client/24,129", "client:x", "header", "header:", "cookie:a b", "path:x", "flow:x", "ip", "query:a=b"} {
		_, err := balancer.ParseKey(bad)
		assert.Error(t, err, bad)
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"client/24,56", "header:X-User", "query:uid", "flow", "client/", ":", "cookie:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := balancer.ParseKey(s)
		if err != nil {
			return
		}
		// Property: what parses prints back to a form that parses to the same key.
		back, err := balancer.ParseKey(k.String())
		if err != nil || back != k {
			t.Fatalf("ParseKey(%q) = %+v, printed %q, reparsed %+v, %v", s, k, k.String(), back, err)
		}
	})
}

func TestKeyClientPrefix(t *testing.T) {
	k := balancer.MustParseKey("client/24,56")
	a := k.Client(netip.MustParseAddr("198.18.0.1"))
	b := k.Client(netip.MustParseAddr("198.18.0.200"))
	c := k.Client(netip.MustParseAddr("198.18.1.1"))
	mapped := k.Client(netip.MustParseAddr("::ffff:198.18.0.9"))
	assert.True(t, a.HasKey)
	assert.Equal(t, a, b, "same /24")
	assert.Equal(t, a, mapped, "IPv4-mapped IPv6 is the IPv4 client")
	assert.NotEqual(t, a, c, "other /24")
	v6a := k.Client(netip.MustParseAddr("2001:db8:0:1::1"))
	v6b := k.Client(netip.MustParseAddr("2001:db8:0:1:ffff::1"))
	v6c := k.Client(netip.MustParseAddr("2001:db8:1::1"))
	assert.Equal(t, v6a, v6b, "same /56")
	assert.NotEqual(t, v6a, v6c)
	assert.Equal(t, balancer.PickInfo{}, balancer.Key{}.Client(netip.MustParseAddr("198.18.0.1")))
	whole := balancer.MustParseKey("client")
	assert.NotEqual(t, whole.Client(netip.MustParseAddr("198.18.0.1")), whole.Client(netip.MustParseAddr("198.18.0.2")))
}

func TestKeyFlow(t *testing.T) {
	src := netip.MustParseAddrPort("198.18.0.1:40000")
	src2 := netip.MustParseAddrPort("198.18.0.1:40001")
	dst := netip.MustParseAddrPort("198.18.0.100:80")
	flow := balancer.MustParseKey("flow")
	assert.NotEqual(t, flow.Flow(balancer.TCP, src, dst), flow.Flow(balancer.TCP, src2, dst), "ports count")
	assert.Equal(t, balancer.WithKey(balancer.HashFlow(6, src, dst)), flow.Flow(balancer.TCP, src, dst))
	client := balancer.MustParseKey("client")
	assert.Equal(t, client.Flow(balancer.TCP, src, dst), client.Flow(balancer.TCP, src2, dst), "client key ignores ports")
}

func TestKeyRequest(t *testing.T) {
	r := httptest.NewRequest("GET", "http://example.test/a/b?x=1&uid=42&uid=7", nil)
	r.Header.Set("X-User", "alice")
	r.AddCookie(&http.Cookie{Name: "sid", Value: "s1"})
	client := netip.MustParseAddr("198.18.0.7")
	kr := balancer.HTTPRequest(r, client)
	h := func(s string) balancer.PickInfo { return balancer.WithKey(balancer.HashString(s)) }
	for _, tc := range []struct {
		key  string
		want balancer.PickInfo
	}{
		{"header:x-user", h("alice")},
		{"cookie:sid", h("s1")},
		{"path", h("/a/b")},
		{"query:uid", h("42")},
		{"client", balancer.WithKey(balancer.HashAddr(client))},
		{"header:X-Missing", balancer.WithKey(balancer.HashAddr(client))},
		{"cookie:missing", balancer.WithKey(balancer.HashAddr(client))},
		{"query:missing", balancer.WithKey(balancer.HashAddr(client))},
		{"", balancer.PickInfo{}},
	} {
		assert.Equal(t, tc.want, balancer.MustParseKey(tc.key).Request(kr), tc.key)
	}
}

func TestProtoText(t *testing.T) {
	for _, p := range []balancer.Proto{balancer.TCP, balancer.UDP} {
		b, err := p.MarshalText()
		require.NoError(t, err)
		var q balancer.Proto
		require.NoError(t, q.UnmarshalText(b))
		assert.Equal(t, p, q)
	}
	var q balancer.Proto
	assert.Error(t, q.UnmarshalText([]byte("sctp")))
}
