package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Errors from [Parse] and [Read].
var (
	// ErrIncomplete means the bytes so far are a valid start of a header:
	// read more and parse again.
	ErrIncomplete = errors.New("proxyproto: incomplete header")
	// ErrInvalid means the bytes are not a valid PROXY header; the
	// connection should be closed.
	ErrInvalid = errors.New("proxyproto: invalid header")
)

// Parse parses the PROXY header (version 1 or 2) at the start of b and
// returns it with its length in bytes. It returns [ErrIncomplete] when b
// is a valid but partial header and an error wrapping [ErrInvalid] when b
// cannot start one. TLV values are copied; the header keeps no reference
// to b.
func Parse(b []byte) (Header, int, error) {
	switch {
	case len(b) == 0:
		return Header{}, 0, ErrIncomplete
	case b[0] == v2Sig[0]:
		return parseV2(b)
	case b[0] == v1Sig[0]:
		return parseV1(b)
	}
	return Header{}, 0, invalid("no signature")
}

func invalid(why string) error { return fmt.Errorf("%w: %s", ErrInvalid, why) }

func parseV1(b []byte) (Header, int, error) {
	h := Header{Version: V1}
	if n := min(len(b), len(v1Sig)); !bytes.Equal(b[:n], v1Sig[:n]) {
		return h, 0, invalid("no signature")
	}
	line := b[:min(len(b), V1MaxLen)]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		if len(b) >= V1MaxLen {
			return h, 0, invalid("v1 line too long")
		}
		if cr := bytes.IndexByte(line, '\r'); cr >= 0 && cr != len(line)-1 {
			return h, 0, invalid("v1 line has a bare CR")
		}
		return h, 0, ErrIncomplete
	}
	if end < len(v1Sig)+1 || line[end-1] != '\r' {
		return h, 0, invalid("v1 line must end in CRLF")
	}
	if bytes.IndexByte(line[:end-1], '\r') >= 0 {
		return h, 0, invalid("v1 line has a bare CR")
	}
	n := end + 1
	rest := line[len(v1Sig) : end-1]
	proto, rest, _ := bytes.Cut(rest, []byte{' '})
	switch string(proto) {
	case "UNKNOWN":
		return h, n, nil // the rest of the line is ignored
	case "TCP4", "TCP6":
	default:
		return h, 0, invalid("v1 protocol must be TCP4, TCP6 or UNKNOWN")
	}
	var fields [4][]byte
	for i := range fields {
		var ok bool
		fields[i], rest, ok = bytes.Cut(rest, []byte{' '})
		if ok != (i < len(fields)-1) {
			return h, 0, invalid("v1 needs source, destination and two ports")
		}
	}
	v6 := proto[3] == '6'
	src, err1 := netip.ParseAddr(string(fields[0]))
	dst, err2 := netip.ParseAddr(string(fields[1]))
	sp, ok1 := port(fields[2])
	dp, ok2 := port(fields[3])
	switch {
	case err1 != nil || err2 != nil || !ok1 || !ok2:
		return h, 0, invalid("v1 bad address or port")
	case src.Zone() != "" || dst.Zone() != "":
		return h, 0, invalid("v1 address with a zone")
	case src.Is4() == v6 || dst.Is4() == v6:
		return h, 0, invalid("v1 address family does not match the protocol")
	}
	h.Transport = TCP
	h.Source = netip.AddrPortFrom(src, sp)
	h.Destination = netip.AddrPortFrom(dst, dp)
	return h, n, nil
}

// port parses a decimal port of 1 to 5 digits without a sign or leading
// zeros ("0" itself is allowed).
func port(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if v > 0xffff {
		return 0, false
	}
	return uint16(v), true
}

func parseV2(b []byte) (Header, int, error) {
	h := Header{Version: V2}
	if n := min(len(b), len(v2Sig)); !bytes.Equal(b[:n], v2Sig[:n]) {
		return h, 0, invalid("no signature")
	}
	if len(b) >= 13 {
		if b[12]>>4 != 2 {
			return h, 0, invalid("v2 version must be 2")
		}
		if cmd := b[12] & 0x0f; cmd > 1 {
			return h, 0, invalid("v2 command must be LOCAL or PROXY")
		}
	}
	if len(b) >= 14 {
		if fam, tr := b[13]>>4, b[13]&0x0f; fam > 3 || tr > 2 {
			return h, 0, invalid("v2 unknown address family or transport")
		}
	}
	if len(b) < 16 {
		return h, 0, ErrIncomplete
	}
	size := int(binary.BigEndian.Uint16(b[14:16]))
	n := 16 + size
	if len(b) < n {
		return h, 0, ErrIncomplete
	}
	body := b[16:n]
	if b[12]&0x0f == 0 {
		h.Local = true // LOCAL: the block is ignored
		return h, n, nil
	}
	var alen int
	switch b[13] >> 4 {
	case 1:
		alen = 12
	case 2:
		alen = 36
	default:
		return h, n, nil // unspecified or Unix: use the real endpoints
	}
	if len(body) < alen {
		return h, 0, invalid("v2 address block too short")
	}
	h.Transport = Transport(b[13] & 0x0f)
	var src, dst netip.Addr
	if alen == 12 {
		src = netip.AddrFrom4([4]byte(body[0:4]))
		dst = netip.AddrFrom4([4]byte(body[4:8]))
	} else {
		src = netip.AddrFrom16([16]byte(body[0:16]))
		dst = netip.AddrFrom16([16]byte(body[16:32]))
	}
	ports := body[alen-4 : alen]
	h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(ports[0:2]))
	h.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(ports[2:4]))
	for rest := body[alen:]; len(rest) > 0; {
		if len(rest) < 3 {
			return Header{Version: V2}, 0, invalid("v2 truncated TLV")
		}
		l := int(binary.BigEndian.Uint16(rest[1:3]))
		if len(rest) < 3+l {
			return Header{Version: V2}, 0, invalid("v2 TLV longer than the header")
		}
		h.TLVs = append(h.TLVs, TLV{Type: rest[0], Value: bytes.Clone(rest[3 : 3+l])})
		rest = rest[3+l:]
	}
	return h, n, nil
}

// Read reads a PROXY header (version 1 or 2) from the start of r and
// consumes exactly its bytes, leaving the payload in r. It blocks until
// the header is complete or r fails; set a read deadline on the
// connection to bound the wait. A version 2 header longer than r's buffer
// is reported as invalid. At EOF before a complete header it returns
// io.ErrUnexpectedEOF.
func Read(r *bufio.Reader) (Header, error) {
	for {
		buf, _ := r.Peek(r.Buffered())
		h, n, err := Parse(buf)
		switch {
		case err == nil:
			_, err = r.Discard(n)
			return h, err
		case !errors.Is(err, ErrIncomplete):
			return Header{}, err
		case len(buf) >= r.Size():
			return Header{}, invalid("header larger than the reader's buffer")
		}
		if _, err := r.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Header{}, err
		}
	}
}
