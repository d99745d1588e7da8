package dnslb

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cutZone has wildcards (one with a CNAME) and two delegations, one
// with a DS record (signed) and glue below and beside the cut.
const cutZone = `
$TTL 300
@            IN SOA ns1 hostmaster 1 3600 600 86400 60
@            IN NS  ns1
ns1          IN A   198.18.0.53
txt          IN TXT "hello"
*.wild       IN A   198.18.0.60
*.wild       IN TXT "wild"
exists.wild  IN TXT "there"
*.cnw        IN CNAME txt
*.cnsvc      IN CNAME svc
sub          IN NS  ns.sub
sub          IN NS  ns1
sub          IN NS  ns.elsewhere.test.
ns.sub       IN A   198.18.0.70
ns.sub       IN AAAA 2001:db8::70
secure       IN NS  ns.secure
secure       IN DS  12345 13 2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
ns.secure    IN A   198.18.0.71
`

// TestWildcardsAndDelegationsAsKnot: wildcard synthesis (RFC 4592) and
// referrals (NS with AA clear, glue) match Knot answering the same zone
// file, header, answer, authority and additional sections.
func TestWildcardsAndDelegationsAsKnot(t *testing.T) {
	knot := startKnot(t, "example.test.", cutZone+"svc IN A 198.18.0.1\n")
	pool := newPool(t, nil, be("198.18.0.1:80"))
	_, addr := startServer(t, Config{
		Zones:    []Zone{{Origin: "example.test.", Records: cutZone}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool, TTL: 300 * time.Second}},
		Logger:   quiet,
	})
	tests := []struct {
		name  string
		qtype uint16
	}{
		{"a.wild", dns.TypeA},
		{"A.Wild", dns.TypeTXT},
		{"a.wild", dns.TypeAAAA},
		{"b.a.wild", dns.TypeA},
		{"exists.wild", dns.TypeA},
		{"exists.wild", dns.TypeTXT},
		{"x.exists.wild", dns.TypeA},
		{"wild", dns.TypeA},
		{"a.cnw", dns.TypeA},
		{"a.cnw", dns.TypeTXT},
		{"a.cnsvc", dns.TypeA},
		{"sub", dns.TypeA},
		{"sub", dns.TypeNS},
		{"www.sub", dns.TypeA},
		{"ns.sub", dns.TypeA},
		{"sub", dns.TypeDS},
		{"secure", dns.TypeDS},
		{"x.secure", dns.TypeA},
		{"nope", dns.TypeA},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%s", tc.name, dns.TypeToString[tc.qtype]), func(t *testing.T) {
			for _, netw := range []string{"udp", "tcp"} {
				want := ask(t, knot.addr, netw, tc.name+".example.test.", tc.qtype)
				got := ask(t, addr, netw, tc.name+".example.test.", tc.qtype)
				want.Id, got.Id = 0, 0
				assert.Equal(t, want.MsgHdr, got.MsgHdr, netw)
				assert.Equal(t, rrStrings(want.Answer), rrStrings(got.Answer), netw)
				assert.Equal(t, rrStrings(want.Ns), rrStrings(got.Ns), netw)
				assert.Equal(t, rrStrings(want.Extra), rrStrings(got.Extra), netw)
			}
		})
	}
}

// TestCutZoneRejects: a service cannot sit under a delegation or be a
// wildcard, and a wildcard label must be the leftmost.
func TestCutZoneRejects(t *testing.T) {
	pool := newPool(t, nil, be("198.18.0.1:80"))
	for _, tc := range []struct {
		records string
		svc     string
	}{
		{cutZone, "x.sub.example.test."},
		{cutZone, "*.svcs.example.test."},
		{cutZone + "a.*.b IN A 198.18.0.1\n", ""},
		{cutZone + "*.nsw IN NS ns1\n", ""},
		{cutZone + "sub IN CNAME txt\n", ""},
	} {
		cfg := Config{Zones: []Zone{{Origin: "example.test.", Records: tc.records}}}
		if tc.svc != "" {
			cfg.Services = []Service{{Name: tc.svc, Pool: pool}}
		}
		_, err := New(cfg)
		require.Error(t, err, "%q %s", tc.svc, tc.records[len(cutZone):])
	}
}
