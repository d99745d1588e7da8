package dnslb

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/miekg/dns"
)

// Signature lifetimes of online signing: a signature is valid from an
// hour before it is made (clock skew) for a week, and a cached one is
// made anew after three days, so a validator never sees one within four
// days of expiring.
const (
	sigBackdate = time.Hour
	sigValidity = 7 * 24 * time.Hour
	sigRefresh  = 3 * 24 * time.Hour
)

// maxSigCache bounds the signed answers cached per service snapshot
// (distinct answer orders and subsets) and the denials of names that do
// not exist cached per zone (see sigMap).
const maxSigCache = 4096

// SigningKey is a DNSSEC key a zone is signed with online (see
// Zone.Keys). Keys with the SEP flag (flags 257, a KSK or a combined
// signing key) sign the DNSKEY RRset and are published as CDS and
// CDNSKEY; keys without it (256, ZSKs) sign everything else, or, when a
// zone has none, the SEP keys do. Its fields must not change after use.
type SigningKey struct {
	// DNSKEY is the public key, owned by the zone's apex.
	DNSKEY *dns.DNSKEY
	// Private is the private key: an *ecdsa.PrivateKey for algorithm 13
	// (ECDSAP256SHA256) or an ed25519.PrivateKey for 15 (ED25519).
	Private crypto.Signer
}

// GenerateKey makes a new combined signing key (flags 257: it signs the
// DNSKEY RRset and the zone) for the zone at origin with algorithm
// dns.ECDSAP256SHA256 or dns.ED25519. Save it with [SigningKey.WriteFiles].
func GenerateKey(origin string, algorithm uint8) (SigningKey, error) {
	if algorithm != dns.ECDSAP256SHA256 && algorithm != dns.ED25519 {
		return SigningKey{}, fmt.Errorf("dnslb: algorithm %d: only ECDSAP256SHA256 (13) and ED25519 (15) are supported", algorithm)
	}
	k := &dns.DNSKEY{Hdr: dns.RR_Header{Name: dns.CanonicalName(dns.Fqdn(origin)), Rrtype: dns.TypeDNSKEY,
		Class: dns.ClassINET, Ttl: 3600}, Flags: 257, Protocol: 3, Algorithm: algorithm}
	priv, err := k.Generate(256) // the size both algorithms imply
	if err != nil {
		return SigningKey{}, fmt.Errorf("dnslb: generate key: %w", err)
	}
	return SigningKey{DNSKEY: k, Private: priv.(crypto.Signer)}, nil
}

// LoadKey reads a key pair in the BIND format that dnssec-keygen and
// ldns-keygen write: base+".key", the DNSKEY record in zone-file syntax,
// and base+".private" (Private-key-format v1.2 or v1.3), where base is
// such as "Kexample.test.+013+12345".
func LoadKey(base string) (SigningKey, error) {
	pub, err := os.ReadFile(base + ".key")
	if err != nil {
		return SigningKey{}, fmt.Errorf("dnslb: key: %w", err)
	}
	var k *dns.DNSKEY
	zp := dns.NewZoneParser(strings.NewReader(string(pub)), "", base+".key")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if dk, isKey := rr.(*dns.DNSKEY); isKey {
			k = dk
			break
		}
	}
	if err := zp.Err(); err != nil {
		return SigningKey{}, fmt.Errorf("dnslb: key %s.key: %w", base, err)
	}
	if k == nil {
		return SigningKey{}, fmt.Errorf("dnslb: key %s.key: no DNSKEY record", base)
	}
	f, err := os.Open(base + ".private")
	if err != nil {
		return SigningKey{}, fmt.Errorf("dnslb: key: %w", err)
	}
	defer f.Close()
	priv, err := k.ReadPrivateKey(f, base+".private")
	if err != nil {
		return SigningKey{}, fmt.Errorf("dnslb: key %s.private: %w", base, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return SigningKey{}, fmt.Errorf("dnslb: key %s.private: not a signing key", base)
	}
	sk := SigningKey{DNSKEY: k, Private: signer}
	return sk, sk.check()
}

// WriteFiles writes the key in BIND format to dir, as
// K<origin>+<algorithm>+<key tag>.key and .private (mode 0600), and
// returns the base path to give [LoadKey].
func (k SigningKey) WriteFiles(dir string) (string, error) {
	if err := k.check(); err != nil {
		return "", err
	}
	base := filepath.Join(dir, fmt.Sprintf("K%s+%03d+%05d", k.DNSKEY.Hdr.Name, k.DNSKEY.Algorithm, k.DNSKEY.KeyTag()))
	if err := os.WriteFile(base+".key", []byte(k.DNSKEY.String()+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("dnslb: write key: %w", err)
	}
	if err := os.WriteFile(base+".private", []byte(k.DNSKEY.PrivateKeyString(k.Private)), 0o600); err != nil {
		return "", fmt.Errorf("dnslb: write key: %w", err)
	}
	return base, nil
}

// DS returns the key's DS record (SHA-256 digest) for the parent zone,
// or nil for an invalid key.
func (k SigningKey) DS() *dns.DS {
	if k.DNSKEY == nil {
		return nil
	}
	return k.DNSKEY.ToDS(dns.SHA256)
}

// check reports whether the key is usable.
func (k SigningKey) check() error {
	if k.DNSKEY == nil || k.Private == nil {
		return errors.New("dnslb: a signing key needs a DNSKEY and a private key")
	}
	switch k.Private.(type) {
	case *ecdsa.PrivateKey:
		if k.DNSKEY.Algorithm != dns.ECDSAP256SHA256 {
			return fmt.Errorf("dnslb: key %d: an ECDSA key needs algorithm 13", k.DNSKEY.KeyTag())
		}
	case ed25519.PrivateKey:
		if k.DNSKEY.Algorithm != dns.ED25519 {
			return fmt.Errorf("dnslb: key %d: an Ed25519 key needs algorithm 15", k.DNSKEY.KeyTag())
		}
	default:
		return fmt.Errorf("dnslb: key %d: only ECDSA P-256 and Ed25519 keys are supported", k.DNSKEY.KeyTag())
	}
	if k.DNSKEY.Flags&dns.ZONE == 0 || k.DNSKEY.Protocol != 3 {
		return fmt.Errorf("dnslb: key %d: not a zone key (flags %d, protocol %d)", k.DNSKEY.KeyTag(), k.DNSKEY.Flags, k.DNSKEY.Protocol)
	}
	return nil
}

// zoneSigner signs a zone's RRsets with its keys.
type zoneSigner struct {
	origin string
	ksk    []SigningKey // sign DNSKEY
	zsk    []SigningKey // sign the rest
	now    func() time.Time
}

func newZoneSigner(origin string, keys []SigningKey) (*zoneSigner, error) {
	zs := &zoneSigner{origin: origin, now: time.Now}
	for _, k := range keys {
		if err := k.check(); err != nil {
			return nil, err
		}
		if dns.CanonicalName(k.DNSKEY.Hdr.Name) != origin {
			return nil, fmt.Errorf("dnslb: zone %q: key %d belongs to %s", origin, k.DNSKEY.KeyTag(), k.DNSKEY.Hdr.Name)
		}
		if k.DNSKEY.Flags&dns.SEP != 0 {
			zs.ksk = append(zs.ksk, k)
		} else {
			zs.zsk = append(zs.zsk, k)
		}
	}
	if len(zs.ksk) == 0 {
		return nil, fmt.Errorf("dnslb: zone %q: signing needs a key with the SEP flag (257)", origin)
	}
	if len(zs.zsk) == 0 {
		zs.zsk = zs.ksk
	}
	return zs, nil
}

// apexRRs returns the DNSKEY, CDS and CDNSKEY records the apex serves:
// every key in DNSKEY, the SEP keys in CDS (SHA-256) and CDNSKEY
// (RFC 7344).
func (zs *zoneSigner) apexRRs(ttl uint32) []dns.RR {
	var out []dns.RR
	for _, k := range slices.Concat(zs.ksk, zs.zsk) {
		dk := dns.Copy(k.DNSKEY).(*dns.DNSKEY)
		dk.Hdr.Name, dk.Hdr.Ttl = zs.origin, ttl
		if !slices.ContainsFunc(out, func(rr dns.RR) bool { return dns.IsDuplicate(rr, dk) }) {
			out = append(out, dk)
		}
	}
	for _, k := range zs.ksk {
		dk := dns.Copy(k.DNSKEY).(*dns.DNSKEY)
		dk.Hdr.Name, dk.Hdr.Ttl = zs.origin, ttl
		cdnskey := dk.ToCDNSKEY()
		cds := dk.ToDS(dns.SHA256).ToCDS()
		cdnskey.Hdr.Ttl, cds.Hdr.Ttl = ttl, ttl
		out = append(out, cds, cdnskey)
	}
	return out
}

// sigEntry is signed data packed for the wire: records in the form
// rrset.wire has (owner a pointer to the question name), valid for
// reuse until the Unix time until.
type sigEntry struct {
	wire   []byte
	n      int
	until  int64
	serial uint32 // the SOA serial signed, for the SOA's entry
}

// sign returns the RRSIGs over rrset (one per key that signs it),
// packed; rrset is not empty and its records share owner, class and
// type.
func (zs *zoneSigner) sign(rrset []dns.RR) (*sigEntry, error) {
	now := zs.now()
	keys := zs.zsk
	if rrset[0].Header().Rrtype == dns.TypeDNSKEY {
		keys = zs.ksk
	}
	e := &sigEntry{until: now.Add(sigRefresh).Unix()}
	for _, k := range keys {
		sig := &dns.RRSIG{
			Hdr:        dns.RR_Header{Name: rrset[0].Header().Name, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: rrset[0].Header().Ttl},
			Inception:  uint32(now.Add(-sigBackdate).Unix()),
			Expiration: uint32(now.Add(sigValidity).Unix()),
			KeyTag:     k.DNSKEY.KeyTag(),
			SignerName: zs.origin,
			Algorithm:  k.DNSKEY.Algorithm,
		}
		if err := sig.Sign(k.Private, rrset); err != nil {
			return nil, fmt.Errorf("dnslb: sign %s: %w", rrset[0].Header().Name, err)
		}
		rest, err := packRest(sig)
		if err != nil {
			return nil, err
		}
		e.wire = append(e.wire, rest...)
		e.n++
	}
	return e, nil
}

// signWith returns rrs and their RRSIGs packed together: the records
// first, then the signatures.
func (zs *zoneSigner) signWith(rrs []dns.RR) (*sigEntry, error) {
	e, err := zs.sign(rrs)
	if err != nil {
		return nil, err
	}
	var wire []byte
	for _, rr := range rrs {
		rest, err := packRest(rr)
		if err != nil {
			return nil, err
		}
		wire = append(wire, rest...)
	}
	e.wire = append(wire, e.wire...)
	e.n += len(rrs)
	return e, nil
}

// sigSlot caches one signed RRset, made anew when it is due.
type sigSlot struct {
	mu sync.Mutex
	p  atomic.Pointer[sigEntry]
}

// get returns the cached entry for serial (zero but for the SOA), or
// makes one with mk when there is none or it is due at now (Unix
// seconds). It returns nil when signing fails.
func (s *sigSlot) get(now int64, serial uint32, mk func() (*sigEntry, error)) *sigEntry {
	if e := s.p.Load(); e != nil && now < e.until && e.serial == serial {
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.p.Load(); e != nil && now < e.until && e.serial == serial {
		return e
	}
	e, err := mk()
	if err != nil {
		return nil
	}
	e.serial = serial
	s.p.Store(e)
	return e
}

// sigMap caches signed answers by key (owner name and records) in a
// direct-mapped table of maxSigCache slots: a lookup is a hash, one
// atomic load and a compare, an insert one store that replaces what the
// slot held, so a flood of distinct names costs its signatures and no
// more, and cannot pin the cache.
type sigMap struct {
	slots atomic.Pointer[[maxSigCache]atomic.Pointer[keyedSig]]
}

// keyedSig is a sigMap entry.
type keyedSig struct {
	key string
	e   *sigEntry
}

// get returns the entry for key, making it with mk when missing or due.
func (c *sigMap) get(key []byte, now int64, mk func() (*sigEntry, error)) *sigEntry {
	slots := c.slots.Load()
	if slots == nil {
		c.slots.CompareAndSwap(nil, new([maxSigCache]atomic.Pointer[keyedSig]))
		slots = c.slots.Load()
	}
	slot := &slots[xxhash.Sum64(key)%maxSigCache]
	if ks := slot.Load(); ks != nil && ks.key == string(key) && now < ks.e.until {
		return ks.e
	}
	e, err := mk()
	if err != nil {
		return nil
	}
	slot.Store(&keyedSig{key: string(key), e: e})
	return e
}

// unpackRecords turns pre-packed records (owner a compression pointer)
// into an RRset owned by the wire name owner.
func unpackRecords(owner, wire []byte) ([]dns.RR, error) {
	var out []dns.RR
	buf := make([]byte, 0, len(owner)+512)
	for i := 0; i+12 <= len(wire); {
		end := i + 12 + (int(wire[i+10])<<8 | int(wire[i+11]))
		buf = append(append(buf[:0], owner...), wire[i+2:end]...)
		rr, _, err := dns.UnpackRR(buf, 0)
		if err != nil {
			return nil, fmt.Errorf("dnslb: unpack record: %w", err)
		}
		out = append(out, rr)
		i = end
	}
	return out, nil
}

// nameString returns the presentation form of a wire name, escaped.
func nameString(w []byte) string {
	s, _, err := dns.UnpackDomainName(w, 0)
	if err != nil {
		return "."
	}
	return s
}

// nsecEntry returns the NSEC record for the name owner (wire form)
// listing types (plus RRSIG and NSEC), next name "\000.owner" (the
// minimally covering "black lies" form of RFC 4470), with its RRSIGs.
func (zs *zoneSigner) nsecEntry(owner []byte, ttl uint32, types []uint16) (*sigEntry, error) {
	name := nameString(owner)
	next := "\\000." + name
	if len(owner)+2 > maxNameLen+1 {
		next = name // no room for a label: the NSEC covers only its owner
	}
	bitmap := append(slices.Clone(types), dns.TypeRRSIG, dns.TypeNSEC)
	slices.Sort(bitmap)
	bitmap = slices.Compact(bitmap)
	nsec := &dns.NSEC{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: ttl},
		NextDomain: next, TypeBitMap: bitmap}
	return zs.signWith([]dns.RR{nsec})
}
