package dnslb

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Zone is one zone the server is authoritative for.
type Zone struct {
	// Origin is the zone's apex, such as "example.test." (a trailing dot
	// is added when missing).
	Origin string
	// Records is the zone's data as zone-file text (RFC 1035 master file
	// format, parsed with dns.ZoneParser; relative names are relative to
	// Origin). It must hold exactly one SOA record, at the apex. Every
	// name must be inside the zone. NS records below the apex delegate
	// (queries at or under the name get a referral: the NS records with
	// the AA bit clear, glue for in-zone targets, and, signed, the DS
	// records or an NSEC proving there are none); wildcards ("*.name",
	// RFC 4592) answer names under name that do not exist. DNAME is not
	// supported.
	Records string
	// Keys, when not empty, sign the zone online (DNSSEC): answers to
	// queries with the DO bit carry RRSIGs made when a service's answers
	// change (cached per pool snapshot, not made per query), the apex
	// answers DNSKEY, CDS and CDNSKEY, and negative answers prove
	// themselves with minimally covering NSEC records (see [Server]).
	// Records must then hold no DNSKEY, CDS, CDNSKEY, RRSIG or NSEC.
	// Load keys with [LoadKey] or make them with [GenerateKey].
	Keys []SigningKey
}

// zone is a compiled Zone: its names in lower-case wire form mapped to the
// records (pre-packed) and services they hold.
type zone struct {
	origin string // canonical presentation form
	apex   []byte // lower-case wire form
	negTTL uint32 // min(SOA TTL, SOA MINIMUM), RFC 2308 §5
	// soaRest is the SOA record after its owner name (type, class, TTL =
	// negTTL, rdata with uncompressed names), for authority sections.
	soaRest []byte
	nodes   map[string]*node
	soa     *dns.SOA       // as in the zone data
	rrs     []dns.RR       // every record but the SOA, for transfers
	ser     *atomic.Uint32 // the serial answers carry; nil: the SOA's own
	sg      *zoneSigner    // nil: unsigned
	soaSig  sigSlot        // RRSIGs of the SOA at the current serial
	nxSigs  sigMap         // signed NSEC of names that do not exist or match a wildcard
	wSigs   sigMap         // signed answers synthesized from wildcards
	cuts    bool           // some node is a delegation
	wild    bool           // some node is a wildcard
}

// node is one name in a zone. A node without records and service is an
// empty non-terminal: it exists (NODATA, not NXDOMAIN).
type node struct {
	rrsets map[uint16]*rrset
	svc    *service
	nsec   sigSlot // signed NSEC for NODATA answers (static nodes)
	// cut is set at a delegation point: the NS records to refer with,
	// packed for the authority section, and the glue for the additional.
	cut *delegation
}

// delegation is a zone cut below the apex.
type delegation struct {
	name  []byte // lower-case wire form
	glue  []byte // A and AAAA records of in-zone NS targets, full owner names
	glueN int
}

// rrset is a static RRset packed for an answer section: each record is
// the compression pointer to the question name (0xC00C) followed by type,
// class, TTL and rdata with uncompressed names.
type rrset struct {
	wire []byte
	n    int
	rrs  []dns.RR // the records, for signing
	sig  sigSlot
}

// wireName returns the lower-case wire form of the presentation name s
// (fully qualified).
func wireName(s string) ([]byte, error) {
	s = dns.CanonicalName(s)
	buf := make([]byte, maxNameLen+1)
	off, err := dns.PackDomainName(s, buf, 0, nil, false)
	if err != nil {
		return nil, fmt.Errorf("dnslb: name %q: %w", s, err)
	}
	return buf[:off], nil
}

// packRest packs rr with the owner name replaced by a compression pointer
// to the question name, ready to be appended to an answer section.
func packRest(rr dns.RR) ([]byte, error) {
	h := *rr.Header()
	cp := dns.Copy(rr)
	cp.Header().Name = "."
	buf := make([]byte, 2+dns.Len(cp)+16)
	off, err := dns.PackRR(cp, buf, 1, nil, false)
	if err != nil {
		return nil, fmt.Errorf("dnslb: record %s: %w", h.Name, err)
	}
	// buf[1] is the root owner byte 0; overwrite buf[0:2] with 0xC00C.
	buf[0], buf[1] = 0xC0, headerLen
	return buf[:off], nil
}

// compileZone parses z into a zone.
func compileZone(z Zone) (*zone, error) {
	origin := dns.CanonicalName(dns.Fqdn(z.Origin))
	if _, ok := dns.IsDomainName(origin); !ok || z.Origin == "" {
		return nil, fmt.Errorf("dnslb: invalid zone origin %q", z.Origin)
	}
	apex, err := wireName(origin)
	if err != nil {
		return nil, err
	}
	zn := &zone{origin: origin, apex: apex, nodes: make(map[string]*node)}
	zp := dns.NewZoneParser(strings.NewReader(z.Records), origin, "")
	zp.SetDefaultTTL(3600)
	var soa *dns.SOA
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		if h.Class != dns.ClassINET {
			return nil, fmt.Errorf("dnslb: zone %q: record %s: only class IN is served", origin, h.Name)
		}
		if !dns.IsSubDomain(origin, h.Name) {
			return nil, fmt.Errorf("dnslb: zone %q: record %s is outside the zone", origin, h.Name)
		}
		apexName := h.Name == origin
		switch h.Rrtype {
		case dns.TypeSOA:
			if !apexName || soa != nil {
				return nil, fmt.Errorf("dnslb: zone %q: exactly one SOA, at the apex, is allowed", origin)
			}
			soa = rr.(*dns.SOA)
		case dns.TypeDNAME:
			return nil, fmt.Errorf("dnslb: zone %q: DNAME at %s is not supported", origin, h.Name)
		case dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNSEC3, dns.TypeOPT, dns.TypeTSIG:
			return nil, fmt.Errorf("dnslb: zone %q: %s records are not served", origin, dns.TypeToString[h.Rrtype])
		case dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY:
			if len(z.Keys) > 0 {
				return nil, fmt.Errorf("dnslb: zone %q: %s records come from Keys when signing", origin, dns.TypeToString[h.Rrtype])
			}
		}
		if labels := dns.SplitDomainName(h.Name); slices.Contains(labels[min(1, len(labels)):], "*") {
			return nil, fmt.Errorf("dnslb: zone %q: %s: a wildcard label must be the leftmost", origin, h.Name)
		}
		if strings.HasPrefix(h.Name, "*.") {
			zn.wild = true
			if h.Rrtype == dns.TypeNS {
				return nil, fmt.Errorf("dnslb: zone %q: NS at wildcard %s is not supported", origin, h.Name)
			}
		}
		if err := zn.add(rr); err != nil {
			return nil, err
		}
		if h.Rrtype != dns.TypeSOA {
			zn.rrs = append(zn.rrs, rr)
		}
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("dnslb: zone %q: %w", origin, err)
	}
	if soa == nil {
		return nil, fmt.Errorf("dnslb: zone %q: no SOA record", origin)
	}
	zn.soa = soa
	zn.negTTL = min(soa.Hdr.Ttl, soa.Minttl)
	neg := dns.Copy(soa).(*dns.SOA)
	neg.Hdr.Ttl = zn.negTTL
	rest, err := packRest(neg)
	if err != nil {
		return nil, err
	}
	zn.soaRest = rest[2:]
	if len(z.Keys) > 0 {
		if zn.sg, err = newZoneSigner(origin, z.Keys); err != nil {
			return nil, err
		}
		for _, rr := range zn.sg.apexRRs(soa.Hdr.Ttl) {
			if err := zn.add(rr); err != nil {
				return nil, err
			}
		}
	}
	if err := zn.compileCuts(); err != nil {
		return nil, err
	}
	// CNAME must stand alone at its name (RFC 1034 §3.6.2).
	for name, nd := range zn.nodes {
		if cn := nd.rrsets[dns.TypeCNAME]; cn != nil && (len(nd.rrsets) > 1 || cn.n > 1) {
			return nil, fmt.Errorf("dnslb: zone %q: CNAME at %s must be the only record there, and only one", origin, presentation([]byte(name)))
		}
	}
	return zn, nil
}

// add inserts rr, creating its node and the empty non-terminals between
// it and the apex.
func (zn *zone) add(rr dns.RR) error {
	h := rr.Header()
	nd, err := zn.ensure(h.Name)
	if err != nil {
		return err
	}
	rest, err := packRest(rr)
	if err != nil {
		return err
	}
	set := nd.rrsets[h.Rrtype]
	if set == nil {
		set = &rrset{}
		nd.rrsets[h.Rrtype] = set
	}
	set.wire = append(set.wire, rest...)
	set.n++
	set.rrs = append(set.rrs, rr)
	return nil
}

// ensure returns the node for name (inside the zone), creating it and its
// ancestors up to the apex.
func (zn *zone) ensure(name string) (*node, error) {
	w, err := wireName(name)
	if err != nil {
		return nil, err
	}
	key := string(w)
	nd := zn.nodes[key]
	if nd == nil {
		nd = &node{rrsets: make(map[uint16]*rrset)}
		zn.nodes[key] = nd
	}
	for off := 0; len(w)-off > len(zn.apex); off += int(w[off]) + 1 {
		anc := string(w[off+int(w[off])+1:])
		if zn.nodes[anc] == nil {
			zn.nodes[anc] = &node{rrsets: make(map[uint16]*rrset)}
		}
	}
	return nd, nil
}

// presentation returns the presentation form of a wire name (for
// messages only).
func presentation(w []byte) string {
	var sb strings.Builder
	for off := 0; off < len(w) && w[off] != 0; off += int(w[off]) + 1 {
		sb.Write(w[off+1 : off+1+int(w[off])])
		sb.WriteByte('.')
	}
	if sb.Len() == 0 {
		return "."
	}
	return sb.String()
}

// compileCuts marks the delegations (NS below the apex) and packs their
// glue: the A and AAAA records the zone holds for the NS targets.
func (zn *zone) compileCuts() error {
	for name, nd := range zn.nodes {
		ns := nd.rrsets[typeNS]
		if ns == nil || name == string(zn.apex) {
			continue
		}
		if nd.rrsets[typeSOA] != nil || nd.rrsets[typeCNAME] != nil {
			return fmt.Errorf("dnslb: zone %q: CNAME or SOA at delegation %s", zn.origin, presentation([]byte(name)))
		}
		zn.cuts = true
		d := &delegation{name: []byte(name)}
		var seen []string
		for _, rr := range ns.rrs {
			target := dns.CanonicalName(rr.(*dns.NS).Ns)
			if slices.Contains(seen, target) || !dns.IsSubDomain(zn.origin, target) {
				continue
			}
			seen = append(seen, target)
			tw, err := wireName(target)
			if err != nil {
				return err
			}
			tn := zn.nodes[string(tw)]
			if tn == nil {
				continue
			}
			for _, typ := range []uint16{typeA, typeAAAA} {
				if set := tn.rrsets[typ]; set != nil {
					for i := 0; i+12 <= len(set.wire); {
						end := i + 12 + (int(set.wire[i+10])<<8 | int(set.wire[i+11]))
						d.glue = append(d.glue, tw...)
						d.glue = append(d.glue, set.wire[i+2:end]...)
						d.glueN++
						i = end
					}
				}
			}
		}
		nd.cut = d
	}
	return nil
}

// delegated returns the delegation lname (lower-case wire form, in zn)
// is at or under, the one nearest the apex, or nil. A DS query at the
// cut itself is answered by this side of it (the parent), so ds leaves
// out a cut at lname.
func (zn *zone) delegated(lname []byte, ds bool) *node {
	var cut *node
	for off := 0; len(lname)-off > len(zn.apex); off += int(lname[off]) + 1 {
		if nd := zn.nodes[string(lname[off:])]; nd != nil && nd.cut != nil && !(ds && off == 0) {
			cut = nd
		}
	}
	return cut
}

// wildcard returns the wildcard node that synthesizes lname, a name in
// zn that does not exist (RFC 4592 §3.3.1: "*." and the closest
// encloser), or nil. key is scratch space.
func (zn *zone) wildcard(lname []byte, key *[]byte) *node {
	for off := int(lname[0]) + 1; off < len(lname); off += int(lname[off]) + 1 {
		if zn.nodes[string(lname[off:])] == nil {
			continue
		}
		*key = append(append((*key)[:0], 1, '*'), lname[off:]...)
		return zn.nodes[string(*key)]
	}
	return nil
}
