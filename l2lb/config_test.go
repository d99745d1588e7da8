package l2lb

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

func TestNewRejectsBadConfig(t *testing.T) {
	pool := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	vip := netip.MustParseAddrPort("198.18.0.100:80")
	ok := Service{VIP: vip, Pool: pool}
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no interface", Config{Services: []Service{ok}}, "Interface or InterfaceIndex is required"},
		{"too many services", Config{Interface: "eth0", Services: []Service{ok, {VIP: vip, Proto: UDP, Pool: pool}}, MaxServices: 1}, "MaxServices is 1"},
		{"key prefix", Config{Interface: "eth0", Services: []Service{{VIP: vip, Pool: pool, Key: balancer.Key{Source: balancer.KeyClient, Bits4: 40}}}}, "prefix length out of range"},
		{"no port", Config{Interface: "eth0", Services: []Service{{VIP: netip.AddrPortFrom(vip.Addr(), 0), Pool: pool}}}, "invalid VIP"},
		{"mapped address", Config{Interface: "eth0", Services: []Service{{VIP: netip.MustParseAddrPort("[::ffff:198.18.0.100]:80"), Pool: pool}}}, "plain IPv4 or IPv6"},
		{"protocol", Config{Interface: "eth0", Services: []Service{{VIP: vip, Proto: 1, Pool: pool}}}, "not TCP or UDP"},
		{"nil pool", Config{Interface: "eth0", Services: []Service{{VIP: vip}}}, "nil Pool"},
		{"duplicate", Config{Interface: "eth0", Services: []Service{ok, {VIP: vip, Proto: TCP, Pool: pool}}}, "listed twice"},
		{"max services", Config{Interface: "eth0", Services: []Service{ok}, MaxServices: 1 << 20}, "MaxServices"},
		{"negative interval", Config{Interface: "eth0", Services: []Service{ok}, ResolveInterval: -1}, "must be positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := New(c.cfg) // fails validation before it needs root
			assert.Nil(t, b)
			assert.ErrorContains(t, err, c.want)
		})
	}
}

func TestEnumText(t *testing.T) {
	for _, m := range []AttachMode{AttachAuto, AttachDriver, AttachGeneric} {
		text, err := m.MarshalText()
		assert.NoError(t, err)
		var got AttachMode
		assert.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, m, got)
	}
	var m AttachMode
	assert.Error(t, m.UnmarshalText([]byte("native")))
	_, err := AttachMode(9).MarshalText()
	assert.Error(t, err)
	for _, v := range []Verdict{Drop, Pass, TX} {
		text, err := v.MarshalText()
		assert.NoError(t, err)
		var got Verdict
		assert.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, v, got)
	}
	var v Verdict
	assert.Error(t, v.UnmarshalText([]byte("XDP_REDIRECT")))
	_, err = Verdict(0).MarshalText()
	assert.Error(t, err)
	for _, c := range []CacheResult{CacheMiss, CacheHit, CacheRepick} {
		text, err := c.MarshalText()
		assert.NoError(t, err)
		var got CacheResult
		assert.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, c, got)
	}
}
