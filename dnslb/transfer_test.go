package dnslb

import (
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	xfrKey   = TSIGKey{Name: "xfr.", Secret: xfrKeySecret}
)

// transfer runs an AXFR (serial < 0) or IXFR from serial against addr,
// signed with key when it has a name, and returns the records or the
// error.
func transfer(t *testing.T, addr string, key TSIGKey, serial int64) ([]dns.RR, error) {
	t.Helper()
	m := new(dns.Msg)
	if serial < 0 {
		m.SetAxfr("example.test.")
	} else {
		m.SetIxfr("example.test.", uint32(serial), "ns1.example.test.", "hostmaster.example.test.")
	}
	tr := &dns.Transfer{DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second}
	if key.Name != "" {
		m.SetTsig(key.Name, dns.HmacSHA256, 300, time.Now().Unix())
		tr.TsigSecret = map[string]string{key.Name: key.Secret}
	}
	ch, err := tr.In(m, addr)
	if err != nil {
		return nil, err
	}
	var out []dns.RR
	for env := range ch {
		if env.Error != nil {
			return nil, env.Error
		}
		out = append(out, env.RR...)
	}
	return out, nil
}

// xfrStrings returns the records' presentation forms, in order.
func xfrStrings(rrs []dns.RR) []string {
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = rr.String()
	}
	return out
}

func soaSerial(t *testing.T, addr string) uint32 {
	t.Helper()
	r := ask(t, addr, "udp", "example.test.", dns.TypeSOA)
	require.Len(t, r.Answer, 1)
	return r.Answer[0].(*dns.SOA).Serial
}

// TestTransfer: AXFR holds the SOA, the zone data and the service's
// ready backends, with the serial queries see; after a health change the
// serial rises, an IXFR from the old serial holds just the difference,
// one from the current serial the SOA alone, and one from an unknown
// serial the whole zone.
func TestTransfer(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))
	_, addr := startServer(t, Config{
		Services:      []Service{{Name: "svc.example.test.", Pool: pool, TTL: 20 * time.Second}},
		TransferPeers: loopback, TransferKeys: []TSIGKey{xfrKey}, NotifyDelay: time.Millisecond, Logger: quiet,
	})
	s0 := soaSerial(t, addr)
	assert.GreaterOrEqual(t, int64(s0), time.Now().Add(-time.Minute).Unix(), "the serial starts at the Unix time")
	rrs, err := transfer(t, addr, xfrKey, -1)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(rrs), 2)
	assert.Equal(t, s0, rrs[0].(*dns.SOA).Serial)
	assert.Equal(t, rrs[0].String(), rrs[len(rrs)-1].String())
	got := xfrStrings(rrs[1 : len(rrs)-1])
	assert.ElementsMatch(t, []string{
		"example.test.\t300\tIN\tNS\tns1.example.test.",
		"ns1.example.test.\t300\tIN\tA\t198.18.0.53",
		"www.example.test.\t300\tIN\tCNAME\tsvc.example.test.",
		"txt.example.test.\t300\tIN\tTXT\t\"hello\"",
		"a.b.deep.example.test.\t300\tIN\tA\t198.18.0.54",
		"svc.example.test.\t20\tIN\tA\t198.18.0.1",
		"svc.example.test.\t20\tIN\tA\t198.18.0.2",
	}, got)

	pool.SetHealthy(netip.MustParseAddrPort("198.18.0.2:80"), false)
	require.Eventually(t, func() bool { return soaSerial(t, addr) != s0 }, 10*time.Second, time.Millisecond)
	s1 := soaSerial(t, addr)
	assert.Greater(t, int32(s1-s0), int32(0), "serial arithmetic: newer")

	rrs, err = transfer(t, addr, xfrKey, int64(s0))
	require.NoError(t, err)
	want := []string{
		withSerial(rrs[0].(*dns.SOA), s1).String(),
		withSerial(rrs[0].(*dns.SOA), s0).String(),
		"svc.example.test.\t20\tIN\tA\t198.18.0.2",
		withSerial(rrs[0].(*dns.SOA), s1).String(),
		withSerial(rrs[0].(*dns.SOA), s1).String(),
	}
	assert.Equal(t, want, xfrStrings(rrs), "IXFR: the difference")

	rrs, err = transfer(t, addr, xfrKey, int64(s1))
	require.NoError(t, err)
	assert.Equal(t, want[:1], xfrStrings(rrs), "IXFR from the current serial: the SOA alone")

	rrs, err = transfer(t, addr, xfrKey, int64(s0-1000))
	require.NoError(t, err)
	assert.Len(t, rrs, 2+6, "IXFR from an unknown serial: the whole zone")
	assert.Contains(t, xfrStrings(rrs), "svc.example.test.\t20\tIN\tA\t198.18.0.1")
	assert.NotContains(t, xfrStrings(rrs), "svc.example.test.\t20\tIN\tA\t198.18.0.2")

	// IXFR over UDP: the current SOA, signed.
	m := new(dns.Msg)
	m.SetIxfr("example.test.", s0, "ns1.example.test.", "hostmaster.example.test.")
	m.SetTsig(xfrKey.Name, dns.HmacSHA256, 300, time.Now().Unix())
	c := &dns.Client{Net: "udp", TsigSecret: map[string]string{xfrKey.Name: xfrKey.Secret}, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	require.NoError(t, err, "the UDP reply verifies")
	require.Len(t, r.Answer, 1)
	assert.Equal(t, s1, r.Answer[0].(*dns.SOA).Serial)

	// A signed SOA query, as secondaries send, gets a signed answer.
	m = new(dns.Msg)
	m.SetQuestion("example.test.", dns.TypeSOA)
	m.SetTsig(xfrKey.Name, dns.HmacSHA256, 300, time.Now().Unix())
	r, _, err = c.Exchange(m, addr)
	require.NoError(t, err, "the answer verifies")
	require.NotNil(t, r.IsTsig())
	assert.Equal(t, s1, r.Answer[0].(*dns.SOA).Serial)
}

// TestTransferLargeZone: a zone too large for one message is sent in
// several, each signed (the client verifies the chain of MACs).
func TestTransferLargeZone(t *testing.T) {
	text := testZone
	for i := range 3000 {
		text += "h" + strconv.Itoa(i) + " IN TXT \"some text to make the zone larger than one message\"\n"
	}
	_, addr := startServer(t, Config{
		Zones:         []Zone{{Origin: "example.test.", Records: text}},
		TransferPeers: loopback, TransferKeys: []TSIGKey{xfrKey}, Logger: quiet,
	})
	m := new(dns.Msg)
	m.SetAxfr("example.test.")
	m.SetTsig(xfrKey.Name, dns.HmacSHA256, 300, time.Now().Unix())
	tr := &dns.Transfer{TsigSecret: map[string]string{xfrKey.Name: xfrKey.Secret}}
	ch, err := tr.In(m, addr)
	require.NoError(t, err)
	msgs, n := 0, 0
	for env := range ch {
		require.NoError(t, env.Error)
		msgs++
		n += len(env.RR)
	}
	assert.Greater(t, msgs, 1)
	assert.Equal(t, 3000+5+2, n)
}

// TestTransferRefused: transfers are refused to hosts outside
// TransferPeers, unsigned or badly signed when keys are configured, and
// entirely without TransferPeers.
func TestTransferRefused(t *testing.T) {
	_, open := startServer(t, Config{Logger: quiet})
	_, err := transfer(t, open, TSIGKey{}, -1)
	assert.ErrorContains(t, err, "rcode: 5", "no TransferPeers: no transfers")

	_, other := startServer(t, Config{TransferPeers: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Logger: quiet})
	_, err = transfer(t, other, TSIGKey{}, -1)
	assert.ErrorContains(t, err, "rcode: 5", "a host outside the peers")

	_, signed := startServer(t, Config{TransferPeers: loopback, TransferKeys: []TSIGKey{xfrKey}, Logger: quiet})
	_, err = transfer(t, signed, TSIGKey{}, -1)
	assert.ErrorContains(t, err, "rcode: 5", "unsigned")
	_, err = transfer(t, signed, TSIGKey{Name: "xfr.", Secret: testKeySecret}, -1)
	assert.Error(t, err, "a wrong secret")
	_, err = transfer(t, signed, TSIGKey{Name: "other.", Secret: xfrKeySecret}, -1)
	assert.Error(t, err, "an unknown key")
	_, err = transfer(t, signed, xfrKey, -1)
	assert.NoError(t, err)

	_, unsigned := startServer(t, Config{TransferPeers: loopback, Logger: quiet})
	_, err = transfer(t, unsigned, TSIGKey{}, -1)
	assert.NoError(t, err, "peers without keys may transfer unsigned")
}

// TestSerialAcrossUpdate: the serial keeps rising across Update when
// the zone changes, stays when it does not, and a new server starts at
// the Unix time or the zone file's serial, whichever is larger.
func TestSerialAcrossUpdate(t *testing.T) {
	zones := []Zone{{Origin: "example.test.", Records: testZone}}
	s, addr := startServer(t, Config{Zones: zones, TransferPeers: loopback, Logger: quiet})
	s0 := soaSerial(t, addr)
	require.NoError(t, s.Update(zones, nil))
	assert.Equal(t, s0, soaSerial(t, addr), "no change, same serial")
	require.NoError(t, s.Update([]Zone{{Origin: "example.test.", Records: testZone + "new IN A 198.18.0.9\n"}}, nil))
	s1 := soaSerial(t, addr)
	assert.Greater(t, int32(s1-s0), int32(0))
	r := ask(t, addr, "udp", "nothere.example.test.", dns.TypeA)
	require.Len(t, r.Ns, 1)
	assert.Equal(t, s1, r.Ns[0].(*dns.SOA).Serial, "negative answers carry the serial too")

	const future = "$TTL 300\n@ IN SOA ns1 hostmaster 4000000000 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 198.18.0.53\n"
	_, addr2 := startServer(t, Config{Zones: []Zone{{Origin: "example.test.", Records: future}}, TransferPeers: loopback, Logger: quiet})
	assert.Equal(t, uint32(4000000000), soaSerial(t, addr2))
}

// TestNotifyDebounced: a secondary gets a NOTIFY when the server starts
// and, for a pool flapping every few milliseconds, one per NotifyDelay
// rather than one per flap, the last with the final serial.
func TestNotifyDebounced(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	var notifies atomic.Int32
	serials := make(chan uint32, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil || m.Opcode != dns.OpcodeNotify || len(m.Answer) != 1 {
				continue
			}
			notifies.Add(1)
			serials <- m.Answer[0].(*dns.SOA).Serial
			r := new(dns.Msg)
			r.SetReply(&m)
			out, _ := r.Pack()
			pc.WriteTo(out, from)
		}
	}()
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))
	_, addr := startServer(t, Config{
		Services: []Service{{Name: "svc.example.test.", Pool: pool}},
		Notify:   []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}, NotifyDelay: 300 * time.Millisecond, Logger: quiet,
	})
	first := <-serials
	assert.Equal(t, soaSerial(t, addr), first, "a NOTIFY at start")
	tick := time.NewTicker(5 * time.Millisecond)
	for i := range 40 { // 200 ms of flapping
		<-tick.C
		pool.SetHealthy(netip.MustParseAddrPort("198.18.0.2:80"), i%2 == 0) // ends unhealthy
	}
	tick.Stop()
	want := soaSerial(t, addr)
	require.Eventually(t, func() bool { return soaSerial(t, addr) != first }, 5*time.Second, time.Millisecond)
	var last uint32
	for last != want {
		select {
		case last = <-serials:
		case <-time.After(5 * time.Second):
			t.Fatalf("no NOTIFY with serial %d (last %d)", want, last)
		}
		want = soaSerial(t, addr)
	}
	assert.LessOrEqual(t, notifies.Load(), int32(3), "1 at start, 1 or 2 for 40 flaps in 200ms")
}

// TestIXFRHistoryBounded: only IXFRHistory changes are kept; an IXFR
// from before them gets the whole zone.
func TestIXFRHistoryBounded(t *testing.T) {
	s, addr := startServer(t, Config{TransferPeers: loopback, IXFRHistory: 1, Logger: quiet})
	s0 := soaSerial(t, addr)
	require.NoError(t, s.Update([]Zone{{Origin: "example.test.", Records: testZone + "one IN A 198.18.0.9\n"}}, nil))
	s1 := soaSerial(t, addr)
	require.NoError(t, s.Update([]Zone{{Origin: "example.test.", Records: testZone + "two IN A 198.18.0.9\n"}}, nil))
	s2 := soaSerial(t, addr)
	require.True(t, int32(s1-s0) > 0 && int32(s2-s1) > 0)

	rrs, err := transfer(t, addr, TSIGKey{}, int64(s1))
	require.NoError(t, err)
	got := xfrStrings(rrs)
	require.Len(t, got, 6, "the last change: %v", got)
	assert.Equal(t, "one.example.test.\t300\tIN\tA\t198.18.0.9", got[2])
	assert.Equal(t, "two.example.test.\t300\tIN\tA\t198.18.0.9", got[4])

	rrs, err = transfer(t, addr, TSIGKey{}, int64(s0))
	require.NoError(t, err)
	assert.Len(t, rrs, 2+6, "older than the history: the whole zone")
}

// TestIXFRWhileChanging: transfers read a consistent history while
// changes keep arriving (run with -race).
func TestIXFRWhileChanging(t *testing.T) {
	s, addr := startServer(t, Config{TransferPeers: loopback, IXFRHistory: 2, Logger: quiet})
	done := make(chan error)
	go func() {
		var err error
		for i := range 50 {
			if err == nil {
				err = s.Update([]Zone{{Origin: "example.test.", Records: testZone + "n" + strconv.Itoa(i) + " IN A 198.18.0.9\n"}}, nil)
			}
		}
		done <- err
	}()
	for range 50 {
		soa := s.xfr.current("example.test.")
		rrs := s.xfr.transfer("example.test.", int64(soa.Serial-1))
		require.NotEmpty(t, rrs)
		require.IsType(t, &dns.SOA{}, rrs[len(rrs)-1])
	}
	require.NoError(t, <-done)
	_, err := transfer(t, addr, TSIGKey{}, int64(soaSerial(t, addr)-1))
	require.NoError(t, err)
}
