package config

import (
	"encoding/base64"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// maxZoneRecords bounds the records of all zones of a file together
// ($GENERATE makes up to 65536 from one line); dnslb serves small zones.
const maxZoneRecords = 50_000

// zoneInfo is what the service checks need from a parsed zone.
type zoneInfo struct {
	origin string
	// addrNames are owners of A, AAAA, SRV or CNAME records, which a
	// service name must not have.
	addrNames map[string]bool
}

func (d *decoder) dnsListener(l *Listener, pools map[string]*Pool) {
	s := l.DNS
	if len(s.Zones) == 0 && len(s.Updaters) == 0 {
		d.errAt(at2(s, s), "a dns listener needs zones to serve, updaters to run, or both")
	}
	if len(s.Zones) == 0 && len(s.Updaters) > 0 && l.Addr != "" {
		d.errAt(at2(&l.Addr, l), "addr: a dns listener without zones serves nothing")
	}
	var zones []zoneInfo
	for i := range s.Zones {
		z := &s.Zones[i]
		zi, ok := d.dnsZone(z)
		if !ok {
			continue
		}
		if j := slices.IndexFunc(zones, func(o zoneInfo) bool { return o.origin == zi.origin }); j >= 0 {
			d.errAt(at2(&z.Origin, z), "duplicate zone %s: first at line %d", zi.origin, d.posOf(&s.Zones[j].Origin).Line)
			continue
		}
		zones = append(zones, zi)
	}
	if len(s.Services) > 0 && len(s.Zones) == 0 {
		d.errAt(at2(&s.Services, s), "services need zones to live in")
	}
	seen := map[string]*DNSService{}
	for i := range s.Services {
		sv := &s.Services[i]
		if p := d.poolRef(&sv.Pool, sv, pools); p != nil {
			d.ipMembers(p, &sv.Pool, sv, "a dns service")
		}
		name, ok := d.domain(&sv.Name, sv, "name")
		if !ok {
			continue
		}
		if first, dup := seen[name]; dup {
			d.errAt(at2(&sv.Name, sv), "duplicate service %s: first at line %d", name, d.posOf(&first.Name).Line)
		}
		seen[name] = sv
		in := false
		for _, z := range zones {
			if dns.IsSubDomain(z.origin, name) {
				in = true
				if z.addrNames[name] {
					d.errAt(at2(&sv.Name, sv), "service %s also has A, AAAA, SRV or CNAME records in zone %s", name, z.origin)
				}
			}
		}
		if !in && len(zones) == len(s.Zones) && len(zones) > 0 {
			d.errAt(at2(&sv.Name, sv), "service %s is in none of the listener's zones", name)
		}
		d.nonNegative(&sv.Count, sv, "count")
		d.ttl(&sv.TTL, sv)
		if len(sv.Zones) > 0 && sv.Policy != DNSNearest {
			d.errAt(at2(&sv.Zones, sv), "zones have no effect without policy: nearest")
		}
		d.zoneRules(sv.Zones)
		switch {
		case sv.UpdatePort < 0 || sv.UpdatePort > math.MaxUint16:
			d.errAt(at2(&sv.UpdatePort, sv), "update_port: %d: expected 1 to 65535", sv.UpdatePort)
		case sv.UpdatePort > 0 && len(s.UpdateKeys) == 0:
			d.errAt(at2(&sv.UpdatePort, sv), "update_port needs update_keys on the listener: updates are never accepted unsigned")
		}
	}
	if r := s.RRL; r != nil {
		if r.Rate <= 0 {
			d.errAt(at2(&r.Rate, r), "rate: expected a positive number of responses per second")
		}
		d.nonNegative(&r.Burst, r, "burst")
		d.nonNegative(&r.TableSize, r, "table_size")
		if r.IPv4PrefixLen < 0 || r.IPv4PrefixLen > 32 {
			d.errAt(at2(&r.IPv4PrefixLen, r), "ipv4_prefix_len: %d: expected 1 to 32", r.IPv4PrefixLen)
		}
		if r.IPv6PrefixLen < 0 || r.IPv6PrefixLen > 128 {
			d.errAt(at2(&r.IPv6PrefixLen, r), "ipv6_prefix_len: %d: expected 1 to 128", r.IPv6PrefixLen)
		}
	}
	for i := range s.UpdateKeys {
		d.tsigKey(&s.UpdateKeys[i])
	}
	for i := range s.Updaters {
		d.updater(&s.Updaters[i], pools)
	}
	d.nonNegative(&s.UDPSockets, s, "udp_sockets")
	d.nonNegative(&s.MaxTCPConns, s, "max_tcp_conns")
	if s.MaxUDPSize != 0 && (s.MaxUDPSize < 512 || s.MaxUDPSize > 65535) {
		d.errAt(at2(&s.MaxUDPSize, s), "max_udp_size: %d: expected 512 to 65535", s.MaxUDPSize)
	}
}

// domain checks a domain name field and returns it fully qualified and in
// lower case.
func (d *decoder) domain(s *string, parent any, field string) (string, bool) {
	if *s == "" {
		d.errAt(at2(parent, parent), "%s is required", field)
		return "", false
	}
	if _, ok := dns.IsDomainName(*s); !ok {
		d.errAt(at2(s, parent), "%s: %q is not a domain name", field, *s)
		return "", false
	}
	return strings.ToLower(dns.Fqdn(*s)), true
}

func (d *decoder) ttl(t *time.Duration, parent any) {
	if *t%time.Second != 0 {
		d.errAt(at2(t, parent), "ttl: %s is not a whole number of seconds", *t)
	}
}

// dnsZone checks a zone's origin and data: zone-file text that parses, one
// SOA at the apex, NS records at the apex, every name inside the zone, and
// nothing dnslb does not serve (delegations, DNAME, wildcards).
func (d *decoder) dnsZone(z *DNSZone) (zoneInfo, bool) {
	origin, ok := d.domain(&z.Origin, z, "origin")
	if !ok {
		return zoneInfo{}, false
	}
	where := &z.Records
	switch {
	case z.Records != "" && z.File != "":
		d.errAt(at2(&z.File, z), "give records or file, not both")
		return zoneInfo{}, false
	case z.File != "":
		b, ok := d.readFile(&z.File, z, "file")
		if !ok {
			return zoneInfo{}, false
		}
		z.Records = string(b)
		where = &z.File
	case z.Records == "":
		d.errAt(at2(z, z), "zone %s needs records (zone-file text) or a file", origin)
		return zoneInfo{}, false
	}
	field := "records"
	if where == &z.File {
		field = "file " + z.File
	}
	zi := zoneInfo{origin: origin, addrNames: map[string]bool{}}
	zp := dns.NewZoneParser(strings.NewReader(z.Records), origin, "")
	soas, apexNS := 0, 0
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if d.zoneRecords++; d.zoneRecords > maxZoneRecords {
			d.errAt(at2(where, z), "%s: more than %d records in the file's zones", field, maxZoneRecords)
			return zoneInfo{}, false
		}
		h := rr.Header()
		name := strings.ToLower(h.Name)
		switch {
		case !dns.IsSubDomain(origin, name):
			d.errAt(at2(where, z), "%s: %s is outside zone %s", field, h.Name, origin)
			continue
		case strings.HasPrefix(name, "*."):
			d.errAt(at2(where, z), "%s: wildcard %s is not supported", field, h.Name)
			continue
		}
		switch h.Rrtype {
		case dns.TypeSOA:
			soas++
			if name != origin {
				d.errAt(at2(where, z), "%s: SOA at %s, not at the apex %s", field, h.Name, origin)
			}
		case dns.TypeNS:
			if name != origin {
				d.errAt(at2(where, z), "%s: NS at %s: delegations are not supported", field, h.Name)
			}
			apexNS++
		case dns.TypeDNAME:
			d.errAt(at2(where, z), "%s: DNAME at %s is not supported", field, h.Name)
		case dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeCNAME:
			zi.addrNames[name] = true
		}
	}
	if err := zp.Err(); err != nil {
		d.zoneError(z, where, field, err)
		return zoneInfo{}, false
	}
	if soas != 1 {
		d.errAt(at2(where, z), "%s: zone %s needs exactly one SOA record, has %d", field, origin, soas)
	}
	if apexNS == 0 {
		d.errAt(at2(where, z), "%s: zone %s needs NS records at its apex", field, origin)
	}
	return zi, true
}

func (d *decoder) tsigKey(k *TSIGKey) {
	d.domain(&k.Name, k, "name")
	if k.SecretFile == "" {
		d.errAt(at2(k, k), "a TSIG key needs a secret_file")
		return
	}
	b, ok := d.readFile(&k.SecretFile, k, "secret_file")
	if !ok {
		return
	}
	k.Secret = strings.TrimSpace(string(b))
	if raw, err := base64.StdEncoding.DecodeString(k.Secret); err != nil || len(raw) == 0 {
		d.errAt(at2(&k.SecretFile, k), "secret_file: %s does not hold a base64 secret", k.SecretFile)
	}
}

func (d *decoder) updater(u *DNSUpdater, pools map[string]*Pool) {
	if u.Server == "" {
		d.errAt(at2(u, u), "an updater needs a server")
	} else if err := parseMemberAddr(u.Server); err != nil {
		d.errAt(at2(&u.Server, u), "server: bad address %q: %v", u.Server, err)
	}
	zone, zok := d.domain(&u.Zone, u, "zone")
	name, nok := d.domain(&u.Name, u, "name")
	if zok && nok && !dns.IsSubDomain(zone, name) {
		d.errAt(at2(&u.Name, u), "name: %s is outside zone %s", name, zone)
	}
	if u.Type != "" && !strings.EqualFold(u.Type, "A") && !strings.EqualFold(u.Type, "AAAA") {
		d.errAt(at2(&u.Type, u), "type: %q: expected A or AAAA", u.Type)
	}
	d.ttl(&u.TTL, u)
	if p := d.poolRef(&u.Pool, u, pools); p != nil {
		d.ipMembers(p, &u.Pool, u, "a dns updater")
	}
	if _, ok := d.pos[&u.Key]; !ok {
		d.errAt(at2(u, u), "an updater needs a key: servers refuse unsigned updates")
	} else {
		d.tsigKey(&u.Key)
	}
	if u.Net != "" && u.Net != "udp" && u.Net != "tcp" {
		d.errAt(at2(&u.Net, u), "net: %q: expected udp or tcp", u.Net)
	}
}

// zoneErrRE matches the zone parser's errors: message, token, line and
// column within the zone text.
var zoneErrRE = regexp.MustCompile(`^dns: (.*): "((?:[^"\\]|\\.)*)" at line: (\d+):(\d+)$`)

// zoneError reports a zone-file syntax error. Zone text written as a
// literal block ("records: |") maps line for line onto the file, so the
// error is placed on the offending line and token; otherwise it is placed
// at the records or file field and names the line within the zone text.
func (d *decoder) zoneError(z *DNSZone, where *string, field string, err error) {
	m := zoneErrRE.FindStringSubmatch(err.Error())
	if m == nil {
		d.errAt(at2(where, z), "%s: %s", field, strings.TrimPrefix(err.Error(), "dns: "))
		return
	}
	msg, tok := m[1], m[2]
	if t, err := strconv.Unquote(`"` + tok + `"`); err == nil {
		tok = t
	}
	line, _ := strconv.Atoi(m[3])
	col, _ := strconv.Atoi(m[4])
	zlines := strings.Split(z.Records, "\n")
	if line >= 1 && line <= len(zlines) && tok != "" {
		if i := strings.Index(zlines[line-1], tok); i >= 0 {
			col = i + 1 // the parser's column is not always the token's start
		}
	}
	n := d.blocks[where]
	if n != nil && n.Line+line-1 < len(d.lines) {
		text := d.lines[n.Line+line-1] // the block's content starts on the line after "|"
		indent := len(text) - len(strings.TrimLeft(text, " "))
		d.errs = append(d.errs, &Error{
			Position: Position{File: d.file, Line: n.Line + line, Column: indent + col},
			Msg:      fmt.Sprintf("%s: %s: %q", field, msg, tok),
		})
		return
	}
	d.errAt(at2(where, z), "%s: line %d:%d: %s: %q", field, line, col, msg, tok)
}
