package dnslb

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func withDO(m *dns.Msg) { m.SetEdns0(4096, true) }

// TestKeyFiles: a generated key written in BIND format loads back, for
// both algorithms, and the files read as dnssec-keygen's do.
func TestKeyFiles(t *testing.T) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		t.Run(dns.AlgorithmToString[alg], func(t *testing.T) {
			k, err := GenerateKey("example.test", alg)
			require.NoError(t, err)
			base, err := k.WriteFiles(t.TempDir())
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("Kexample.test.+%03d+%05d", alg, k.DNSKEY.KeyTag()), filepath.Base(base))
			priv, err := os.ReadFile(base + ".private")
			require.NoError(t, err)
			assert.Contains(t, string(priv), "Private-key-format: v1.3")
			l, err := LoadKey(base)
			require.NoError(t, err)
			assert.Equal(t, k.DNSKEY.String(), l.DNSKEY.String())
			assert.Equal(t, k.DS().String(), l.DS().String())
		})
	}
	_, err := GenerateKey("example.test", dns.RSASHA256)
	assert.Error(t, err)
	_, err = LoadKey(filepath.Join(t.TempDir(), "Kmissing"))
	assert.Error(t, err)
}

// signedServer returns a worker of a server whose zone is signed with a
// new key of alg, and the key.
func signedServer(t testing.TB, alg uint8, cfg Config) (*Server, SigningKey) {
	t.Helper()
	k, err := GenerateKey("example.test.", alg)
	require.NoError(t, err)
	if cfg.Zones == nil {
		cfg.Zones = []Zone{{Origin: "example.test.", Records: testZone + "cn IN CNAME svc\n", Keys: []SigningKey{k}}}
	}
	if cfg.Services == nil {
		cfg.Services = []Service{{Name: "svc.example.test.", Pool: newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"))}}
	}
	cfg.Logger = quiet
	s, err := New(cfg)
	require.NoError(t, err)
	return s, k
}

func respondMsg(t testing.TB, w *worker, pkt []byte) *dns.Msg {
	t.Helper()
	out := w.respond(pkt, netip.MustParseAddrPort("192.0.2.1:5353"), false)
	require.NotNil(t, out)
	var r dns.Msg
	require.NoError(t, r.Unpack(out[2:]))
	return &r
}

// verifySection checks that every RRset of rrs but RRSIGs has an RRSIG
// in rrs that verifies with key, and returns how many RRsets it saw.
func verifySection(t *testing.T, key *dns.DNSKEY, rrs []dns.RR) int {
	t.Helper()
	sets := map[string][]dns.RR{}
	sigs := map[string]*dns.RRSIG{}
	for _, rr := range rrs {
		h := rr.Header()
		if sig, ok := rr.(*dns.RRSIG); ok {
			sigs[dns.CanonicalName(h.Name)+"/"+dns.TypeToString[sig.TypeCovered]] = sig
			continue
		}
		k := dns.CanonicalName(h.Name) + "/" + dns.TypeToString[h.Rrtype]
		sets[k] = append(sets[k], rr)
	}
	for k, set := range sets {
		sig := sigs[k]
		require.NotNil(t, sig, "no RRSIG over %s", k)
		require.NoError(t, sig.Verify(key, set), "RRSIG over %s", k)
		assert.True(t, sig.ValidityPeriod(time.Now()), "%s", k)
	}
	return len(sets)
}

// TestSignedAnswers: with DO, every answer and negative answer carries
// RRSIGs that verify with the zone's key; without DO none does; a name
// that does not exist gets NOERROR with an NSEC whose bitmap is RRSIG,
// NSEC and NXNAME, an existing name of another type an NSEC listing its
// types; a service's signatures follow its health.
func TestSignedAnswers(t *testing.T) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		t.Run(dns.AlgorithmToString[alg], func(t *testing.T) {
			s, k := signedServer(t, alg, Config{})
			w := s.newWorker()
			for _, tc := range []struct {
				name     string
				qtype    uint16
				sections int // answer RRsets
				nsec     []uint16
			}{
				{"svc.example.test.", dns.TypeA, 1, nil},
				{"svc.example.test.", dns.TypeSRV, 1, nil},
				{"svc.example.test.", dns.TypeAAAA, 0, []uint16{dns.TypeA, dns.TypeSRV}},
				{"ip4-198-18-0-1.svc.example.test.", dns.TypeA, 1, nil},
				{"cn.example.test.", dns.TypeA, 2, nil},
				{"example.test.", dns.TypeSOA, 1, nil},
				{"example.test.", dns.TypeDNSKEY, 1, nil},
				{"example.test.", dns.TypeCDS, 1, nil},
				{"example.test.", dns.TypeCDNSKEY, 1, nil},
				{"txt.example.test.", dns.TypeTXT, 1, nil},
				{"txt.example.test.", dns.TypeA, 0, []uint16{dns.TypeTXT}},
				{"b.deep.example.test.", dns.TypeA, 0, []uint16{}},
				{"nothere.example.test.", dns.TypeA, 0, []uint16{dns.TypeNXNAME}},
				{"example.test.", dns.TypeANY, 1, nil},
			} {
				r := respondMsg(t, w, packQuery(t, tc.name, tc.qtype, withDO))
				require.Equal(t, dns.RcodeSuccess, r.Rcode, "%s %s", tc.name, dns.TypeToString[tc.qtype])
				assert.Equal(t, tc.sections, verifySection(t, k.DNSKEY, r.Answer), "%s %s", tc.name, dns.TypeToString[tc.qtype])
				require.True(t, r.IsEdns0().Do())
				if tc.nsec == nil {
					continue
				}
				assert.Equal(t, 2, verifySection(t, k.DNSKEY, r.Ns), "SOA and NSEC signed")
				var nsec *dns.NSEC
				for _, rr := range r.Ns {
					if n, ok := rr.(*dns.NSEC); ok {
						nsec = n
					}
				}
				require.NotNil(t, nsec)
				assert.Equal(t, tc.name, nsec.Hdr.Name)
				assert.Equal(t, "\\000."+tc.name, nsec.NextDomain, "minimally covering")
				want := append(append([]uint16{}, tc.nsec...), dns.TypeRRSIG, dns.TypeNSEC)
				assert.ElementsMatch(t, want, nsec.TypeBitMap)
			}

			// Without DO: no DNSSEC records, and NXDOMAIN is NXDOMAIN.
			r := respondMsg(t, w, packQuery(t, "nothere.example.test.", dns.TypeA))
			assert.Equal(t, dns.RcodeNameError, r.Rcode)
			assert.Len(t, r.Ns, 1)
			r = respondMsg(t, w, packQuery(t, "svc.example.test.", dns.TypeA, withEDNS(4096)))
			for _, rr := range r.Answer {
				assert.IsType(t, &dns.A{}, rr)
			}

			// A health change: the new answer set is signed.
			pool := s.tab.Load().services[0].cfg.Pool
			pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:80"), false)
			r = respondMsg(t, w, packQuery(t, "svc.example.test.", dns.TypeA, withDO))
			assert.Equal(t, []string{"198.18.0.2"}, addrs(r))
			assert.Equal(t, 1, verifySection(t, k.DNSKEY, r.Answer))
		})
	}
}

// TestSignedNoAllocs: a signed answer whose signature is cached costs no
// allocation, as an unsigned one.
func TestSignedNoAllocs(t *testing.T) {
	s, _ := signedServer(t, dns.ECDSAP256SHA256, Config{})
	w := s.newWorker()
	src := netip.MustParseAddrPort("192.0.2.1:5353")
	for _, name := range []string{"svc.example.test.", "txt.example.test."} {
		pkt := packQuery(t, name, dns.TypeA, withDO)
		for range 4 { // every rotation of the answer signed once
			w.respond(pkt, src, false)
		}
		assert.Zero(t, testing.AllocsPerRun(100, func() { w.respond(pkt, src, false) }), name)
	}
}

// BenchmarkSigned compares answers with DO in a signed zone (cached
// signatures, and NXDOMAIN's NSEC signed per query) with the same
// queries unsigned.
func BenchmarkSigned(b *testing.B) {
	src := netip.MustParseAddrPort("192.0.2.1:5353")
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		s, _ := signedServer(b, alg, Config{})
		for _, tc := range []struct {
			name string
			pkt  []byte
		}{
			{"service/unsigned", packQuery(b, "svc.example.test.", dns.TypeA)},
			{"service/DO", packQuery(b, "svc.example.test.", dns.TypeA, withDO)},
			{"static/DO", packQuery(b, "txt.example.test.", dns.TypeTXT, withDO)},
			{"nodata/DO", packQuery(b, "txt.example.test.", dns.TypeA, withDO)},
			{"nxdomain/unsigned", packQuery(b, "nothere.example.test.", dns.TypeA)},
			{"nxdomain/DO", packQuery(b, "nothere.example.test.", dns.TypeA, withDO)},
		} {
			b.Run(dns.AlgorithmToString[alg]+"/"+tc.name, func(b *testing.B) {
				w := s.newWorker()
				b.ReportAllocs()
				for b.Loop() {
					w.respond(tc.pkt, src, false)
				}
			})
		}
		// A different name each query (a random-subdomain flood): every
		// denial is signed when asked.
		b.Run(dns.AlgorithmToString[alg]+"/nxdomain-distinct/DO", func(b *testing.B) {
			pkts := make([][]byte, 2*maxSigCache+1)
			for i := range pkts {
				pkts[i] = packQuery(b, fmt.Sprintf("n%d.example.test.", i), dns.TypeA, withDO)
			}
			w := s.newWorker()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				w.respond(pkts[i%len(pkts)], src, false)
				i++
			}
		})
	}
}

// startUnbound starts unbound as a validating resolver on a free
// loopback port, with the zone at origin stubbed to primary and anchor
// (a DS or DNSKEY record) as its trust anchor, and no caching, so every
// query reaches dnslb.
func startUnbound(t testing.TB, origin, primary, anchor string) *daemon {
	t.Helper()
	bin := sbinPath(t, "unbound", "unbound")
	dir := t.TempDir()
	port := freePort(t)
	host, pport, _ := net.SplitHostPort(primary)
	conf := fmt.Sprintf(`server:
    interface: 127.0.0.1
    port: %[2]d
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "%[1]s"
    pidfile: "%[1]s/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    local-zone: "test." nodefault
    module-config: "validator iterator"
    trust-anchor: "%[3]s"
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    prefetch: no
    qname-minimisation: no
remote-control:
    control-enable: no
stub-zone:
    name: "%[4]s"
    stub-addr: %[5]s@%[6]s
`, dir, port, anchor, origin, host, pport)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "unbound.conf"), []byte(conf), 0o600))
	return startDaemon(t, "unbound", dir, fmt.Sprintf("127.0.0.1:%d", port), bin, "-d", "-c", filepath.Join(dir, "unbound.conf"))
}

// TestUnboundValidates: a real unbound with the zone's DS as trust anchor
// validates every kind of answer dnslb signs (AD set, never SERVFAIL):
// services, SRV targets, CNAME to a service, static data, the apex's
// DNSKEY, CDS and CDNSKEY, NODATA, empty non-terminals and names that do
// not exist; and again after a health change.
func TestUnboundValidates(t *testing.T) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		t.Run(dns.AlgorithmToString[alg], func(t *testing.T) {
			k, err := GenerateKey("example.test.", alg)
			require.NoError(t, err)
			pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"), be("[2001:db8::1]:80"))
			_, addr := startServer(t, Config{
				Zones:    []Zone{{Origin: "example.test.", Records: testZone + "cn IN CNAME svc\n", Keys: []SigningKey{k}}},
				Services: []Service{{Name: "svc.example.test.", Pool: pool, TTL: time.Second}},
				Logger:   quiet,
			})
			ub := startUnbound(t, "example.test.", addr, k.DS().String())
			ask := func(name string, qtype uint16) *dns.Msg {
				return ub.query(name, qtype, func(m *dns.Msg) { m.RecursionDesired = true; withDO(m) })
			}
			ub.waitFor(20*time.Second, "unbound serves", func() bool {
				r := ask("example.test.", dns.TypeSOA)
				return r != nil && r.Rcode == dns.RcodeSuccess
			})
			check := func(name string, qtype uint16, rcode, answers int) *dns.Msg {
				t.Helper()
				r := ask(name, qtype)
				require.NotNil(t, r, "%s %s: no answer", name, dns.TypeToString[qtype])
				require.Equal(t, dns.RcodeToString[rcode], dns.RcodeToString[r.Rcode], "%s %s:\n%s\n%s", name, dns.TypeToString[qtype], r, ub.log())
				require.True(t, r.AuthenticatedData, "%s %s: not validated:\n%s\n%s", name, dns.TypeToString[qtype], r, ub.log())
				n := 0
				for _, rr := range r.Answer {
					if rr.Header().Rrtype != dns.TypeRRSIG {
						n++
					}
				}
				require.Equal(t, answers, n, "%s %s:\n%s", name, dns.TypeToString[qtype], r)
				return r
			}
			check("svc.example.test.", dns.TypeA, dns.RcodeSuccess, 2)
			check("svc.example.test.", dns.TypeAAAA, dns.RcodeSuccess, 1)
			check("svc.example.test.", dns.TypeSRV, dns.RcodeSuccess, 3)
			check("ip4-198-18-0-1.svc.example.test.", dns.TypeA, dns.RcodeSuccess, 1)
			check("ip4-198-18-0-1.svc.example.test.", dns.TypeAAAA, dns.RcodeSuccess, 0)
			check("cn.example.test.", dns.TypeA, dns.RcodeSuccess, 3)
			check("www.example.test.", dns.TypeAAAA, dns.RcodeSuccess, 2)
			check("example.test.", dns.TypeDNSKEY, dns.RcodeSuccess, 1)
			check("example.test.", dns.TypeCDS, dns.RcodeSuccess, 1)
			check("example.test.", dns.TypeCDNSKEY, dns.RcodeSuccess, 1)
			check("example.test.", dns.TypeNS, dns.RcodeSuccess, 1)
			check("txt.example.test.", dns.TypeTXT, dns.RcodeSuccess, 1)
			check("txt.example.test.", dns.TypeA, dns.RcodeSuccess, 0)
			check("b.deep.example.test.", dns.TypeA, dns.RcodeSuccess, 0)
			check("svc.example.test.", dns.TypeMX, dns.RcodeSuccess, 0)
			check("nothere.example.test.", dns.TypeA, dns.RcodeSuccess, 0)
			check("a.nothere.example.test.", dns.TypeTXT, dns.RcodeSuccess, 0)

			pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:80"), false)
			r := check("svc.example.test.", dns.TypeA, dns.RcodeSuccess, 1)
			assert.Equal(t, []string{"198.18.0.2"}, addrs(r))
			pool.SetHealthy(netip.MustParseAddrPort("[2001:db8::1]:80"), false)
			check("svc.example.test.", dns.TypeAAAA, dns.RcodeSuccess, 1) // the fallback: every member
			pool.SetHealthy(netip.MustParseAddrPort("198.18.0.1:80"), true)
			r = check("svc.example.test.", dns.TypeA, dns.RcodeSuccess, 2)
			assert.Equal(t, []string{"198.18.0.1", "198.18.0.2"}, sorted(addrs(r)))
		})
	}
}

// TestUnboundValidatesWildcardsAndCuts: answers a wildcard synthesizes
// (signed for the name asked), their NODATA, a CNAME from a wildcard, the
// DS of a signed delegation and the NSEC proving an unsigned one has
// none all validate in a real unbound; a referral asked directly carries
// the signed DS or NSEC.
func TestUnboundValidatesWildcardsAndCuts(t *testing.T) {
	k, err := GenerateKey("example.test.", dns.ECDSAP256SHA256)
	require.NoError(t, err)
	pool := newPool(t, nil, be("198.18.0.1:80"))
	s, addr := startServer(t, Config{
		Zones:    []Zone{{Origin: "example.test.", Records: cutZone, Keys: []SigningKey{k}}},
		Services: []Service{{Name: "svc.example.test.", Pool: pool}},
		Logger:   quiet,
	})
	ub := startUnbound(t, "example.test.", addr, k.DS().String())
	ask := func(name string, qtype uint16) *dns.Msg {
		return ub.query(name, qtype, func(m *dns.Msg) { m.RecursionDesired = true; withDO(m) })
	}
	ub.waitFor(20*time.Second, "unbound serves", func() bool {
		r := ask("example.test.", dns.TypeSOA)
		return r != nil && r.Rcode == dns.RcodeSuccess
	})
	for _, tc := range []struct {
		name    string
		qtype   uint16
		answers int
	}{
		{"a.wild.example.test.", dns.TypeA, 1},
		{"b.a.wild.example.test.", dns.TypeTXT, 1},
		{"a.wild.example.test.", dns.TypeAAAA, 0},
		{"exists.wild.example.test.", dns.TypeA, 0},
		{"x.exists.wild.example.test.", dns.TypeA, 0},
		{"a.cnw.example.test.", dns.TypeTXT, 2},
		{"a.cnsvc.example.test.", dns.TypeA, 2},
		{"secure.example.test.", dns.TypeDS, 1},
		{"sub.example.test.", dns.TypeDS, 0},
	} {
		r := ask(tc.name, tc.qtype)
		require.NotNil(t, r, "%s %s", tc.name, dns.TypeToString[tc.qtype])
		require.Equal(t, dns.RcodeSuccess, r.Rcode, "%s %s:\n%s\n%s", tc.name, dns.TypeToString[tc.qtype], r, ub.log())
		require.True(t, r.AuthenticatedData, "%s %s: not validated:\n%s\n%s", tc.name, dns.TypeToString[tc.qtype], r, ub.log())
		n := 0
		for _, rr := range r.Answer {
			if rr.Header().Rrtype != dns.TypeRRSIG {
				n++
			}
		}
		require.Equal(t, tc.answers, n, "%s %s:\n%s", tc.name, dns.TypeToString[tc.qtype], r)
	}

	w := s.newWorker()
	for _, tc := range []struct {
		name string
		typ  uint16 // the signed record that proves the delegation's security
	}{
		{"www.secure.example.test.", dns.TypeDS},
		{"www.sub.example.test.", dns.TypeNSEC},
	} {
		r := respondMsg(t, w, packQuery(t, tc.name, dns.TypeA, withDO))
		require.False(t, r.Authoritative, tc.name)
		var proof []dns.RR
		for _, rr := range r.Ns {
			if rr.Header().Rrtype == tc.typ || rr.Header().Rrtype == dns.TypeRRSIG {
				proof = append(proof, rr)
			}
		}
		assert.Equal(t, 1, verifySection(t, k.DNSKEY, proof), tc.name)
	}
}

// TestSignaturesRenewed: a cached signature is made anew once it is
// sigRefresh old, so a long-running server never serves one near its
// expiration; until then the cached one is served.
func TestSignaturesRenewed(t *testing.T) {
	s, k := signedServer(t, dns.ED25519, Config{Services: []Service{{Name: "svc.example.test.", Pool: newPool(t, nil, be("198.18.0.1:80"))}}})
	zn := s.tab.Load().zones[string([]byte("\x07example\x04test\x00"))]
	require.NotNil(t, zn)
	w := s.newWorker()
	inception := func(name string, qtype uint16) uint32 {
		r := respondMsg(t, w, packQuery(t, name, qtype, withDO))
		require.Equal(t, 1, verifySection(t, k.DNSKEY, r.Answer))
		for _, rr := range r.Answer {
			if sig, ok := rr.(*dns.RRSIG); ok {
				return sig.Inception
			}
		}
		t.Fatal("no RRSIG")
		return 0
	}
	old := time.Now().Add(-sigRefresh - time.Hour)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"txt.example.test.", dns.TypeTXT}, {"svc.example.test.", dns.TypeA}} {
		zn.sg.now = func() time.Time { return old }
		first := inception(q.name, q.qtype)
		assert.Equal(t, uint32(old.Add(-sigBackdate).Unix()), first, q.name)
		zn.sg.now = time.Now
		assert.Greater(t, inception(q.name, q.qtype), first, "%s: due, made anew", q.name)
		again := inception(q.name, q.qtype)
		zn.sg.now = func() time.Time { return time.Now().Add(time.Hour) }
		assert.Equal(t, again, inception(q.name, q.qtype), "%s: not due, cached", q.name)
	}
}

// TestKeyFilesReadByKnot: the BIND key files WriteFiles writes are the
// ones BIND's and Knot's tools use: Knot's keymgr imports them and finds
// the same key (tag and algorithm).
func TestKeyFilesReadByKnot(t *testing.T) {
	bin := sbinPath(t, "keymgr", "knot")
	dir := t.TempDir()
	user := ""
	if os.Geteuid() == 0 {
		user = "    user: root:root\n"
	}
	conf := fmt.Sprintf("server:\n    rundir: %q\n%sdatabase:\n    storage: %q\npolicy:\n  - id: manual\n    manual: on\nzone:\n  - domain: example.test.\n    dnssec-signing: on\n    dnssec-policy: manual\n", dir, user, dir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(conf), 0o600))
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		k, err := GenerateKey("example.test.", alg)
		require.NoError(t, err)
		base, err := k.WriteFiles(dir)
		require.NoError(t, err)
		out, err := exec.Command(bin, "-c", filepath.Join(dir, "knot.conf"), "example.test.", "import-bind", base+".key").CombinedOutput()
		require.NoError(t, err, "%s", out)
		out, err = exec.Command(bin, "-c", filepath.Join(dir, "knot.conf"), "example.test.", "list").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), fmt.Sprintf(" %d ", k.DNSKEY.KeyTag()))
		assert.Contains(t, string(out), dns.AlgorithmToString[alg])
	}
}
