package dnslb

import (
	"encoding/binary"
	"errors"
)

// DNS wire constants used by the fast path (RFC 1035, RFC 6891, RFC 7871).
const (
	headerLen = 12

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagCD = 1 << 4

	opcodeQuery = 0

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5
	rcodeBadVers  = 16 // extended: needs OPT

	typeA     = 1
	typeNS    = 2
	typeCNAME = 5
	typeSOA   = 6
	typeHINFO = 13
	typeAAAA  = 28
	typeSRV   = 33
	typeDS    = 43
	typeOPT   = 41
	typeTSIG  = 250
	typeIXFR  = 251
	typeAXFR  = 252
	typeMAILB = 253
	typeMAILA = 254
	typeANY   = 255

	classIN  = 1
	classANY = 255

	optionECS = 8
	optDO     = 1 << 15 // DNSSEC OK in the OPT record's TTL field

	maxNameLen = 255
)

// errMalformed reports a query the fast-path parser cannot accept; the
// server answers FORMERR when the header was readable.
var errMalformed = errors.New("dnslb: malformed query")

// query is the parsed form of one incoming message: the header, its single
// question (as slices of the packet) and what the OPT record said. It is
// filled in place by parseQuery and holds no pointers to the heap other
// than into the packet, so parsing does not allocate.
type query struct {
	id     uint16
	flags  uint16
	qdcnt  uint16
	opcode uint8

	// question is the question entry as it appears in the packet: name,
	// type and class. qname is its name part (original case).
	question []byte
	qname    []byte
	qtype    uint16
	qclass   uint16

	edns     bool
	udpSize  uint16
	version  uint8
	do       bool // DNSSEC OK (RFC 3225), echoed in the response's OPT
	tsig     bool // a TSIG record is present (the query is signed)
	ecs      bool
	ecsFam   uint16
	ecsSrc   uint8
	ecsBytes uint8 // address bytes present: ceil(ecsSrc/8)
	ecsAddr  [16]byte
}

// parseHeader reads the 12-byte header. It reports false when pkt is
// shorter than a header.
func (q *query) parseHeader(pkt []byte) bool {
	if len(pkt) < headerLen {
		return false
	}
	q.id = binary.BigEndian.Uint16(pkt[0:])
	q.flags = binary.BigEndian.Uint16(pkt[2:])
	q.opcode = uint8(q.flags>>11) & 0xF
	q.qdcnt = binary.BigEndian.Uint16(pkt[4:])
	return true
}

// parseQuery parses pkt (a message whose header parseHeader accepted) as a
// standard query with exactly one question, no answer or authority
// records, and an additional section holding at most one OPT record (other
// additional records are skipped). It resets q first. On error, q.question
// is set if the question itself was readable, so the error response can
// echo it.
func (q *query) parseQuery(pkt []byte) error {
	*q = query{id: q.id, flags: q.flags, qdcnt: q.qdcnt, opcode: q.opcode}
	if q.qdcnt != 1 {
		return errMalformed
	}
	off := headerLen
	// Question name: uncompressed labels only.
	for {
		if off >= len(pkt) {
			return errMalformed
		}
		l := int(pkt[off])
		if l&0xC0 != 0 {
			return errMalformed
		}
		off += 1 + l
		if off-headerLen > maxNameLen {
			return errMalformed
		}
		if l == 0 {
			break
		}
	}
	nameEnd := off
	if off+4 > len(pkt) {
		return errMalformed
	}
	q.qname = pkt[headerLen:nameEnd]
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	q.qclass = binary.BigEndian.Uint16(pkt[off+2:])
	off += 4
	q.question = pkt[headerLen:off]

	an := binary.BigEndian.Uint16(pkt[6:])
	ns := binary.BigEndian.Uint16(pkt[8:])
	ar := int(binary.BigEndian.Uint16(pkt[10:]))
	if an != 0 || ns != 0 {
		return errMalformed
	}
	for range ar {
		var err error
		if off, err = q.parseAdditional(pkt, off); err != nil {
			return err
		}
	}
	if off != len(pkt) {
		return errMalformed
	}
	return nil
}

// parseAdditional parses one additional record at off and returns the
// offset after it.
func (q *query) parseAdditional(pkt []byte, off int) (int, error) {
	// Owner name: labels, possibly ending in a compression pointer.
	root := off < len(pkt) && pkt[off] == 0
	for n := 0; ; n++ {
		if off >= len(pkt) || n > 128 {
			return 0, errMalformed
		}
		l := int(pkt[off])
		if l&0xC0 == 0xC0 {
			off += 2
			break
		}
		if l&0xC0 != 0 {
			return 0, errMalformed
		}
		off += 1 + l
		if l == 0 {
			break
		}
	}
	if off+10 > len(pkt) {
		return 0, errMalformed
	}
	typ := binary.BigEndian.Uint16(pkt[off:])
	class := binary.BigEndian.Uint16(pkt[off+2:])
	ttl := binary.BigEndian.Uint32(pkt[off+4:])
	rdlen := int(binary.BigEndian.Uint16(pkt[off+8:]))
	off += 10
	if off+rdlen > len(pkt) {
		return 0, errMalformed
	}
	rdata := pkt[off : off+rdlen]
	off += rdlen
	if typ == typeTSIG {
		q.tsig = true
	}
	if typ != typeOPT {
		return off, nil
	}
	if q.edns || !root {
		return 0, errMalformed // RFC 6891 §6.1.1: one OPT, owner root
	}
	q.edns = true
	q.udpSize = class
	q.version = uint8(ttl >> 16)
	q.do = ttl&optDO != 0
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return 0, errMalformed
		}
		code := binary.BigEndian.Uint16(rdata)
		olen := int(binary.BigEndian.Uint16(rdata[2:]))
		if 4+olen > len(rdata) {
			return 0, errMalformed
		}
		if code == optionECS {
			if q.ecs {
				return 0, errMalformed
			}
			if err := q.parseECS(rdata[4 : 4+olen]); err != nil {
				return 0, err
			}
		}
		rdata = rdata[4+olen:]
	}
	return off, nil
}

// parseECS parses an EDNS Client Subnet option body (RFC 7871 §6) and
// rejects what §7.1.2 says to answer with FORMERR: an unknown family, a
// prefix longer than the family allows, a nonzero SCOPE in a query, an
// address of the wrong length or with bits set beyond the prefix.
func (q *query) parseECS(b []byte) error {
	if len(b) < 4 {
		return errMalformed
	}
	fam := binary.BigEndian.Uint16(b)
	src, scope := b[2], b[3]
	var maxBits uint8
	switch fam {
	case 1:
		maxBits = 32
	case 2:
		maxBits = 128
	default:
		return errMalformed
	}
	addr := b[4:]
	nb := (int(src) + 7) / 8
	if src > maxBits || scope != 0 || len(addr) != nb {
		return errMalformed
	}
	if nb > 0 && src%8 != 0 {
		if addr[nb-1]&(0xFF>>(src%8)) != 0 {
			return errMalformed
		}
	}
	q.ecs = true
	q.ecsFam = fam
	q.ecsSrc = src
	q.ecsBytes = uint8(nb)
	q.ecsAddr = [16]byte{}
	copy(q.ecsAddr[:], addr)
	return nil
}

// lowerName copies the wire name src into dst with ASCII letters lowered
// and returns dst's used part. Label length bytes (≤ 63) are never letters.
func lowerName(dst *[maxNameLen + 1]byte, src []byte) []byte {
	n := copy(dst[:], src)
	for i := range n {
		if c := dst[i]; 'A' <= c && c <= 'Z' {
			dst[i] = c + 'a' - 'A'
		}
	}
	return dst[:n]
}

// appendHeader appends a response header for q with the given rcode (low
// four bits) and zero counts; the counts are patched by setCounts. RD is
// echoed; CD only for opcodes the server knows (QUERY and UPDATE), as a
// responder to an unknown opcode cannot know what its other bits mean.
func appendHeader(b []byte, q *query, rcode int) []byte {
	echo := uint16(flagRD)
	if q.opcode == opcodeQuery {
		echo |= flagCD
	}
	flags := uint16(flagQR|flagAA) | uint16(q.opcode)<<11 | q.flags&echo | uint16(rcode&0xF)
	return append(b, byte(q.id>>8), byte(q.id), byte(flags>>8), byte(flags), 0, 0, 0, 0, 0, 0, 0, 0)
}

// setCounts writes the section counts into the header at msg[0:12].
func setCounts(msg []byte, qd, an, ns, ar int) {
	binary.BigEndian.PutUint16(msg[4:], uint16(qd))
	binary.BigEndian.PutUint16(msg[6:], uint16(an))
	binary.BigEndian.PutUint16(msg[8:], uint16(ns))
	binary.BigEndian.PutUint16(msg[10:], uint16(ar))
}

// appendOPT appends the response's OPT record: our UDP payload size, the
// extended rcode bits, the query's DO bit (RFC 3225 §3) and, when the
// query carried EDNS Client Subnet, the echoed option with the given SCOPE
// PREFIX-LENGTH (RFC 7871 §7.2.1).
func appendOPT(b []byte, q *query, udpSize uint16, rcode int, scope uint8) []byte {
	ext := byte(rcode >> 4)
	var flags byte
	if q.do {
		flags = optDO >> 8
	}
	rdlen := 0
	if q.ecs {
		rdlen = 4 + 4 + int(q.ecsBytes)
	}
	b = append(b, 0, byte(typeOPT>>8), byte(typeOPT&0xFF), byte(udpSize>>8), byte(udpSize),
		ext, 0, flags, 0, byte(rdlen>>8), byte(rdlen))
	if q.ecs {
		olen := 4 + int(q.ecsBytes)
		b = append(b, 0, optionECS, byte(olen>>8), byte(olen),
			byte(q.ecsFam>>8), byte(q.ecsFam), q.ecsSrc, scope)
		b = append(b, q.ecsAddr[:q.ecsBytes]...)
	}
	return b
}

// appendRRHeader appends the fixed part of a resource record that follows
// its owner name.
func appendRRHeader(b []byte, typ uint16, ttl uint32, rdlen int) []byte {
	return append(b, byte(typ>>8), byte(typ), 0, classIN,
		byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl), byte(rdlen>>8), byte(rdlen))
}
