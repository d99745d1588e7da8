package dnslb

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLimiter(t *testing.T) {
	l, err := newLimiter(RateLimit{Rate: 10, Burst: 3, Slip: 3})
	require.NoError(t, err)
	sec := int64(time.Second)
	c1 := l.key(netip.MustParseAddr("203.0.113.7"))
	require.Equal(t, c1, l.key(netip.MustParseAddr("203.0.113.200")), "one /24, one budget")
	require.Equal(t, c1, l.key(netip.MustParseAddr("::ffff:203.0.113.9")), "IPv4-mapped counts as IPv4")
	require.NotEqual(t, c1, l.key(netip.MustParseAddr("203.0.114.7")))
	require.Equal(t, l.key(netip.MustParseAddr("2001:db8:0:ff::1")), l.key(netip.MustParseAddr("2001:db8:0:1::2")), "one /56")
	require.NotEqual(t, l.key(netip.MustParseAddr("2001:db8:0:100::1")), l.key(netip.MustParseAddr("2001:db8:0:1::2")))

	var got []rrlVerdict
	now := 100 * sec
	for range 9 {
		got = append(got, l.check(c1, now))
	}
	assert.Equal(t, []rrlVerdict{rrlPass, rrlPass, rrlPass, rrlDrop, rrlDrop, rrlSlip, rrlDrop, rrlDrop, rrlSlip}, got,
		"burst of 3, then every 3rd limited response slips")

	// 10/s: one response per 100 ms comes back.
	assert.Equal(t, rrlDrop, l.check(c1, now+sec/20))
	assert.Equal(t, rrlPass, l.check(c1, now+sec/10))
	assert.Equal(t, rrlDrop, l.check(c1, now+sec/10))
	// After a quiet second the full burst is back.
	later := now + 2*sec
	for range 3 {
		assert.Equal(t, rrlPass, l.check(c1, later))
	}

	// Another prefix has its own budget.
	c2 := l.key(netip.MustParseAddr("198.51.100.1"))
	assert.Equal(t, rrlPass, l.check(c2, now))
}

func TestLimiterNoSlipAndConfig(t *testing.T) {
	l, err := newLimiter(RateLimit{Rate: 1, Slip: -1, TableSize: 100})
	require.NoError(t, err)
	assert.Len(t, l.slots, 128, "rounded up to a power of two")
	k := l.key(netip.MustParseAddr("192.0.2.1"))
	assert.Equal(t, rrlPass, l.check(k, 0))
	for range 10 {
		assert.Equal(t, rrlDrop, l.check(k, 0), "negative Slip drops every limited response")
	}
	off, err := newLimiter(RateLimit{})
	require.NoError(t, err)
	assert.Nil(t, off)
	for _, bad := range []RateLimit{{Rate: -1}, {Rate: 1, Burst: -1}, {Rate: 1, IPv4PrefixLen: 33}, {Rate: 1, TableSize: 1 << 25}} {
		_, err := newLimiter(bad)
		assert.Error(t, err, "%+v", bad)
	}
}

func TestLimiterNoAllocs(t *testing.T) {
	l, err := newLimiter(RateLimit{Rate: 100})
	require.NoError(t, err)
	a := netip.MustParseAddr("2001:db8::1")
	assert.Zero(t, testing.AllocsPerRun(100, func() { l.check(l.key(a), l.now()) }))
}
