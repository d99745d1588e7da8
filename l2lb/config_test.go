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
		{"no services", Config{Interface: "eth0"}, "no services"},
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
			b, err := New(c.cfg)
			assert.Nil(t, b)
			assert.ErrorContains(t, err, c.want)
		})
	}
}
