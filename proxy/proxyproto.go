package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// PROXY protocol (HAProxy's "The PROXY protocol", versions 1 and 2): a
// header a proxy sends first on a connection to tell the backend who the
// client is. [TCP] writes one when TCPConfig.ProxyProtocol is set; backends
// written in Go read it with [ReadProxyProtoHeader].

// ProxyProtoTransport is the transport protocol a PROXY header names.
type ProxyProtoTransport uint8

// The transports. Version 1 knows only TCP (and UNKNOWN, which parses as
// ProxyProtoUnspec).
const (
	ProxyProtoUnspec ProxyProtoTransport = iota
	ProxyProtoTCP
	ProxyProtoUDP
)

// Sizes of PROXY headers.
const (
	// ProxyProtoV1MaxLen is the longest valid version 1 header, CRLF
	// included.
	ProxyProtoV1MaxLen = 107
	// ProxyProtoV2MaxAddrLen is the length of a version 2 header with
	// IPv6 addresses and no TLVs, the longest [TCP] sends.
	ProxyProtoV2MaxAddrLen = 16 + 36
)

// Errors from [ParseProxyProtoHeader] and [ReadProxyProtoHeader].
var (
	// ErrProxyProtoIncomplete means the bytes so far are a valid start of
	// a header: read more and parse again.
	ErrProxyProtoIncomplete = errors.New("proxy: incomplete PROXY protocol header")
	// ErrProxyProtoInvalid means the bytes are not a valid PROXY header;
	// the connection should be closed.
	ErrProxyProtoInvalid = errors.New("proxy: invalid PROXY protocol header")
)

var (
	ppV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
	ppV1Sig = []byte("PROXY ")
)

// ProxyProtoTLV is one type-length-value extension of a version 2 header
// (ALPN, authority, CRC32C, unique ID, SSL information, ...).
type ProxyProtoTLV struct {
	Type  uint8
	Value []byte
}

// ProxyProtoHeader is a parsed PROXY protocol header. Its zero value with
// Version set is a valid "unknown" header (v1 "PROXY UNKNOWN", v2 PROXY
// command with an unspecified family).
type ProxyProtoHeader struct {
	// Version is 1 (text) or 2 (binary).
	Version uint8
	// Local is the version 2 LOCAL command: the connection was opened by
	// the proxy itself (a health check), so the receiver uses the real
	// connection endpoints. Addresses and TLVs of a LOCAL header are not
	// kept.
	Local bool
	// Transport is the client connection's transport.
	Transport ProxyProtoTransport
	// Source is the client's address, Destination the address it
	// connected to. Both are valid and of the same family (IPv4 or IPv6),
	// or both are zero: unknown, unspecified or a Unix socket, which the
	// receiver treats as "use the real connection endpoints".
	Source, Destination netip.AddrPort
	// TLVs are the version 2 extensions, in order. Only headers with
	// addresses carry them.
	TLVs []ProxyProtoTLV
}

// hasAddrs reports whether h carries addresses.
func (h *ProxyProtoHeader) hasAddrs() bool {
	return !h.Local && h.Source.IsValid() && h.Destination.IsValid()
}

// addrs returns the addresses in one family: both IPv4 when both are,
// otherwise both in 16-byte form.
func (h *ProxyProtoHeader) addrs() (src, dst netip.Addr, v4 bool) {
	src, dst = h.Source.Addr(), h.Destination.Addr()
	if src.Is4() && dst.Is4() {
		return src, dst, true
	}
	return netip.AddrFrom16(src.As16()), netip.AddrFrom16(dst.As16()), false
}

// Append appends h's wire form, in its Version (2 for any value other than
// 1), to b and returns the result. Version 1 writes "PROXY UNKNOWN" for a
// header without addresses or whose transport is not TCP; version 2 writes
// TLVs only after addresses. Addresses of mixed families are sent as IPv6
// (IPv4-mapped). It does not allocate when b has room.
func (h ProxyProtoHeader) Append(b []byte) []byte {
	if h.Version == 1 {
		return h.appendV1(b)
	}
	return h.appendV2(b)
}

func (h ProxyProtoHeader) appendV1(b []byte) []byte {
	b = append(b, ppV1Sig...)
	if !h.hasAddrs() || h.Transport != ProxyProtoTCP {
		return append(b, "UNKNOWN\r\n"...)
	}
	src, dst, v4 := h.addrs()
	if v4 {
		b = append(b, "TCP4 "...)
	} else {
		b = append(b, "TCP6 "...)
	}
	b = src.AppendTo(b)
	b = append(b, ' ')
	b = dst.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(h.Source.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(h.Destination.Port()), 10)
	return append(b, "\r\n"...)
}

func (h ProxyProtoHeader) appendV2(b []byte) []byte {
	b = append(b, ppV2Sig...)
	if h.Local {
		return append(b, 0x20, 0x00, 0, 0)
	}
	b = append(b, 0x21)
	if !h.hasAddrs() {
		return append(b, 0x00, 0, 0)
	}
	src, dst, v4 := h.addrs()
	fam, n := byte(0x20), 36
	if v4 {
		fam, n = 0x10, 12
	}
	for _, t := range h.TLVs {
		n += 3 + len(t.Value)
	}
	b = append(b, fam|byte(h.Transport&0x0f))
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	if v4 {
		s, d := src.As4(), dst.As4()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	} else {
		s, d := src.As16(), dst.As16()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, h.Source.Port())
	b = binary.BigEndian.AppendUint16(b, h.Destination.Port())
	for _, t := range h.TLVs {
		b = append(b, t.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Value)))
		b = append(b, t.Value...)
	}
	return b
}

// ParseProxyProtoHeader parses the PROXY header (version 1 or 2) at the
// start of b and returns it with its length in bytes. It returns
// [ErrProxyProtoIncomplete] when b is a valid but partial header and an
// error wrapping [ErrProxyProtoInvalid] when b cannot start one. TLV
// values are copied; the header keeps no reference to b.
func ParseProxyProtoHeader(b []byte) (ProxyProtoHeader, int, error) {
	switch {
	case len(b) == 0:
		return ProxyProtoHeader{}, 0, ErrProxyProtoIncomplete
	case b[0] == ppV2Sig[0]:
		return parseV2(b)
	case b[0] == ppV1Sig[0]:
		return parseV1(b)
	}
	return ProxyProtoHeader{}, 0, fmt.Errorf("%w: no signature", ErrProxyProtoInvalid)
}

func ppInvalid(why string) error { return fmt.Errorf("%w: %s", ErrProxyProtoInvalid, why) }

func parseV1(b []byte) (ProxyProtoHeader, int, error) {
	h := ProxyProtoHeader{Version: 1}
	if n := min(len(b), len(ppV1Sig)); !bytes.Equal(b[:n], ppV1Sig[:n]) {
		return h, 0, ppInvalid("no signature")
	}
	line := b[:min(len(b), ProxyProtoV1MaxLen)]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		if len(b) >= ProxyProtoV1MaxLen {
			return h, 0, ppInvalid("v1 line too long")
		}
		if bytes.IndexByte(line, '\r') >= 0 && line[len(line)-1] != '\r' {
			return h, 0, ppInvalid("v1 line has a bare CR")
		}
		return h, 0, ErrProxyProtoIncomplete
	}
	if end < len(ppV1Sig)+1 || line[end-1] != '\r' {
		return h, 0, ppInvalid("v1 line must end in CRLF")
	}
	n := end + 1
	fields := bytes.Split(line[len(ppV1Sig):end-1], []byte{' '})
	switch string(fields[0]) {
	case "UNKNOWN":
		return h, n, nil // the rest of the line is ignored
	case "TCP4", "TCP6":
	default:
		return h, 0, ppInvalid("v1 protocol must be TCP4, TCP6 or UNKNOWN")
	}
	if len(fields) != 5 {
		return h, 0, ppInvalid("v1 needs source, destination and two ports")
	}
	v6 := fields[0][3] == '6'
	src, err1 := netip.ParseAddr(string(fields[1]))
	dst, err2 := netip.ParseAddr(string(fields[2]))
	sp, ok1 := ppPort(fields[3])
	dp, ok2 := ppPort(fields[4])
	switch {
	case err1 != nil || err2 != nil || !ok1 || !ok2:
		return h, 0, ppInvalid("v1 bad address or port")
	case src.Zone() != "" || dst.Zone() != "":
		return h, 0, ppInvalid("v1 address with a zone")
	case src.Is4() == v6 || dst.Is4() == v6:
		return h, 0, ppInvalid("v1 address family does not match the protocol")
	}
	h.Transport = ProxyProtoTCP
	h.Source = netip.AddrPortFrom(src, sp)
	h.Destination = netip.AddrPortFrom(dst, dp)
	return h, n, nil
}

// ppPort parses a decimal port of 1 to 5 digits without a sign or leading
// zeros ("0" itself is allowed).
func ppPort(b []byte) (uint16, bool) {
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

func parseV2(b []byte) (ProxyProtoHeader, int, error) {
	h := ProxyProtoHeader{Version: 2}
	if n := min(len(b), len(ppV2Sig)); !bytes.Equal(b[:n], ppV2Sig[:n]) {
		return h, 0, ppInvalid("no signature")
	}
	if len(b) >= 13 {
		if b[12]>>4 != 2 {
			return h, 0, ppInvalid("v2 version must be 2")
		}
		if cmd := b[12] & 0x0f; cmd > 1 {
			return h, 0, ppInvalid("v2 command must be LOCAL or PROXY")
		}
	}
	if len(b) >= 14 {
		if fam, tr := b[13]>>4, b[13]&0x0f; fam > 3 || tr > 2 {
			return h, 0, ppInvalid("v2 unknown address family or transport")
		}
	}
	if len(b) < 16 {
		return h, 0, ErrProxyProtoIncomplete
	}
	size := int(binary.BigEndian.Uint16(b[14:16]))
	n := 16 + size
	if len(b) < n {
		return h, 0, ErrProxyProtoIncomplete
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
		return h, 0, ppInvalid("v2 address block too short")
	}
	h.Transport = ProxyProtoTransport(b[13] & 0x0f)
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
			return ProxyProtoHeader{Version: 2}, 0, ppInvalid("v2 truncated TLV")
		}
		l := int(binary.BigEndian.Uint16(rest[1:3]))
		if len(rest) < 3+l {
			return ProxyProtoHeader{Version: 2}, 0, ppInvalid("v2 TLV longer than the header")
		}
		h.TLVs = append(h.TLVs, ProxyProtoTLV{Type: rest[0], Value: bytes.Clone(rest[3 : 3+l])})
		rest = rest[3+l:]
	}
	return h, n, nil
}

// ReadProxyProtoHeader reads a PROXY header (version 1 or 2) from the start
// of r and consumes exactly its bytes, leaving the payload in r. It blocks
// until the header is complete or r fails; set a read deadline on the
// connection to bound the wait. A version 2 header longer than r's buffer
// is reported as invalid. At EOF before a complete header it returns
// io.ErrUnexpectedEOF.
func ReadProxyProtoHeader(r *bufio.Reader) (ProxyProtoHeader, error) {
	for {
		buf, _ := r.Peek(r.Buffered())
		h, n, err := ParseProxyProtoHeader(buf)
		switch {
		case err == nil:
			_, err = r.Discard(n)
			return h, err
		case !errors.Is(err, ErrProxyProtoIncomplete):
			return ProxyProtoHeader{}, err
		case len(buf) >= r.Size():
			return ProxyProtoHeader{}, ppInvalid("header larger than the reader's buffer")
		}
		if _, err := r.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return ProxyProtoHeader{}, err
		}
	}
}
