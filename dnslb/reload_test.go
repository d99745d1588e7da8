package dnslb

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reloadConfig is one of the two configurations TestUpdateWhileServing
// swaps between: the zone's serial, where cn points, and which services
// exist with which backend.
type reloadConfig struct {
	zones    []Zone
	services []Service
	// want maps a question ("name type") to the only answer this
	// configuration gives: rcode, answer and authority records.
	want map[string]string
}

// TestUpdateWhileServing flips zones and services between two
// configurations while clients query over UDP and over one TCP
// connection each: every answer is one configuration's (a CNAME from the
// zone data and the service it names come from the same one), and the
// TCP connections stay open.
func TestUpdateWhileServing(t *testing.T) {
	p1 := newPool(t, nil, be("198.18.0.1:80"))
	p2 := newPool(t, nil, be("198.18.0.2:80"))
	p3 := newPool(t, nil, be("198.18.0.3:80"))
	zone := func(serial int, cn string) []Zone {
		return []Zone{{Origin: "example.test.", Records: fmt.Sprintf(
			"@ 300 IN SOA ns1 hostmaster %d 3600 600 86400 60\ncn 300 IN CNAME %s\n", serial, cn)}}
	}
	soa := func(serial int) string {
		return fmt.Sprintf("example.test.\t60\tin\tsoa\tns1.example.test. hostmaster.example.test. %d 3600 600 86400 60", serial)
	}
	a := func(name, addr string) string { return name + ".example.test.\t30\tin\ta\t" + addr }
	cn := func(target string) string { return "cn.example.test.\t300\tin\tcname\t" + target + ".example.test." }
	// A: s1 → .1, s2 → .2, cn → s1.  B: s1 → .3, s3 → .2 (s2 gone), cn → s3.
	cfgA := reloadConfig{zones: zone(1, "s1"), services: []Service{
		{Name: "s1.example.test.", Pool: p1}, {Name: "s2.example.test.", Pool: p2}},
		want: map[string]string{
			"s1": "NOERROR|" + a("s1", "198.18.0.1") + "|",
			"s2": "NOERROR|" + a("s2", "198.18.0.2") + "|",
			"s3": "NXDOMAIN||" + soa(1),
			"cn": "NOERROR|" + cn("s1") + "," + a("s1", "198.18.0.1") + "|",
		}}
	cfgB := reloadConfig{zones: zone(2, "s3"), services: []Service{
		{Name: "s1.example.test.", Pool: p3}, {Name: "s3.example.test.", Pool: p2}},
		want: map[string]string{
			"s1": "NOERROR|" + a("s1", "198.18.0.3") + "|",
			"s2": "NXDOMAIN||" + soa(2),
			"s3": "NOERROR|" + a("s3", "198.18.0.2") + "|",
			"cn": "NOERROR|" + cn("s3") + "," + a("s3", "198.18.0.2") + "|",
		}}
	s, addr := startServer(t, Config{Zones: cfgA.zones, Services: cfgA.services, Logger: quiet})

	summary := func(r *dns.Msg) string {
		return dns.RcodeToString[r.Rcode] + "|" + strings.Join(rrStrings(r.Answer), ",") + "|" + strings.Join(rrStrings(r.Ns), ",")
	}
	// Four clients, each with one TCP connection for the whole test,
	// ask 2,000 questions each while the configuration flips.
	const queries = 2000
	var wg sync.WaitGroup
	seen := make([]map[string]int, 4) // per client: answers seen, by configuration
	for i := range seen {
		seen[i] = map[string]int{}
		wg.Add(1)
		go func(seen map[string]int) {
			defer wg.Done()
			tcp, err := dns.Dial("tcp", addr)
			if !assert.NoError(t, err) {
				return
			}
			defer tcp.Close()
			udp := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
			deadline := time.Now().Add(time.Minute)
			for n := 0; n < queries && time.Now().Before(deadline); n++ {
				name := []string{"s1", "s2", "s3", "cn"}[n%4]
				m := new(dns.Msg)
				m.SetQuestion(name+".example.test.", dns.TypeA)
				var r *dns.Msg
				if n%2 == 0 {
					// One TCP connection for the whole test: it must
					// stay open across every update.
					if !assert.NoError(t, tcp.WriteMsg(m)) {
						return
					}
					r, err = tcp.ReadMsg()
				} else {
					r, _, err = udp.Exchange(m, addr)
				}
				if !assert.NoError(t, err, "query %d", n) {
					return
				}
				got := summary(r)
				switch got {
				case cfgA.want[name]:
					seen["A"]++
				case cfgB.want[name]:
					seen["B"]++
				default:
					assert.Fail(t, "answer of neither configuration", "%s: %s", name, got)
					return
				}
			}
		}(seen[i])
	}
	clientsDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(clientsDone)
	}()
	updates := 0
flip:
	for ; updates < 1_000_000; updates++ {
		select {
		case <-clientsDone:
			break flip
		default:
		}
		c := cfgB
		if updates%2 == 1 {
			c = cfgA
		}
		require.NoError(t, s.Update(c.zones, c.services))
		if updates%100 == 0 {
			// An invalid configuration changes nothing.
			require.Error(t, s.Update(c.zones, append(c.services, Service{Name: "x.other.", Pool: p1})))
		}
	}
	<-clientsDone
	require.NoError(t, s.Update(cfgA.zones, cfgA.services))
	total := map[string]int{}
	for _, m := range seen {
		for k, v := range m {
			total[k] += v
		}
	}
	t.Logf("%d updates; answers by configuration: %v", updates, total)
	assert.Positive(t, total["A"])
	assert.Positive(t, total["B"])
	assert.Equal(t, 4*queries, total["A"]+total["B"])
	// The last update installed A: it answers now.
	r := ask(t, addr, "tcp", "cn.example.test.", dns.TypeA)
	assert.Equal(t, cfgA.want["cn"], summary(r))
}
