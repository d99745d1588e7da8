package proxyproto

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
)

// Version is a PROXY protocol version. In a [Header] it is V1 (text) or
// V2 (binary); in a front-end's configuration its zero value means "send
// (or expect) no header".
type Version uint8

// The versions.
const (
	// V1 is the human-readable text header ("PROXY TCP4 ...\r\n").
	V1 Version = 1
	// V2 is the binary header with optional TLV extensions.
	V2 Version = 2
)

// String returns the version's name: "none", "v1", "v2", or "v<n>" for
// a value out of range.
func (v Version) String() string {
	if v == 0 {
		return "none"
	}
	return "v" + strconv.Itoa(int(v))
}

// MarshalText implements [encoding.TextMarshaler]: "none", "v1" or "v2".
// It fails for other values.
func (v Version) MarshalText() ([]byte, error) {
	if v > V2 {
		return nil, fmt.Errorf("proxyproto: unknown version %d", uint8(v))
	}
	return []byte(v.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler]. It accepts the
// names [Version.MarshalText] writes, "1" and "2" for the versions, and
// "" for none.
func (v *Version) UnmarshalText(b []byte) error {
	switch string(b) {
	case "none", "":
		*v = 0
	case "v1", "1":
		*v = V1
	case "v2", "2":
		*v = V2
	default:
		return fmt.Errorf("proxyproto: unknown version %q (want none, v1 or v2)", b)
	}
	return nil
}

// Transport is the transport protocol a PROXY header names.
type Transport uint8

// The transports. Version 1 knows only TCP (and UNKNOWN, which parses as
// Unspec).
const (
	Unspec Transport = iota
	TCP
	UDP
)

var transportNames = [...]string{Unspec: "unspec", TCP: "tcp", UDP: "udp"}

// String returns the transport's name: "unspec", "tcp" or "udp", or
// "transport(<n>)" for a value out of range.
func (t Transport) String() string {
	if int(t) < len(transportNames) {
		return transportNames[t]
	}
	return "transport(" + strconv.Itoa(int(t)) + ")"
}

// MarshalText implements [encoding.TextMarshaler]: "unspec", "tcp" or
// "udp". It fails for other values.
func (t Transport) MarshalText() ([]byte, error) {
	if int(t) >= len(transportNames) {
		return nil, fmt.Errorf("proxyproto: unknown transport %d", uint8(t))
	}
	return []byte(transportNames[t]), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler] for the names
// [Transport.MarshalText] writes.
func (t *Transport) UnmarshalText(b []byte) error {
	for i, name := range transportNames {
		if string(b) == name {
			*t = Transport(i)
			return nil
		}
	}
	return fmt.Errorf("proxyproto: unknown transport %q (want unspec, tcp or udp)", b)
}

// Sizes of PROXY headers.
const (
	// V1MaxLen is the longest valid version 1 header, CRLF included. A
	// buffer of this size holds any header a front-end sends without
	// TLVs, of either version.
	V1MaxLen = 107
	// V2MaxAddrLen is the length of a version 2 header with IPv6
	// addresses and no TLVs.
	V2MaxAddrLen = 16 + 36
)

// Types of the version 2 TLVs the specification defines. A [TLV] may
// carry any type; these are the registered ones.
const (
	TypeALPN      uint8 = 0x01 // application protocol (ALPN), e.g. "h2"
	TypeAuthority uint8 = 0x02 // host name the client asked for (TLS SNI)
	TypeCRC32C    uint8 = 0x03 // CRC32c checksum of the header
	TypeNoop      uint8 = 0x04 // padding; to be ignored
	TypeUniqueID  uint8 = 0x05 // opaque connection ID, up to 128 bytes
	TypeSSL       uint8 = 0x20 // TLS information, with sub-TLVs
	TypeNetNS     uint8 = 0x30 // network namespace name
)

var (
	v2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
	v1Sig = []byte("PROXY ")
)

// TLV is one type-length-value extension of a version 2 header (ALPN,
// authority, CRC32C, unique ID, TLS information, ...).
type TLV struct {
	Type  uint8
	Value []byte
}

// Header is a PROXY protocol header. Its zero value with Version set is a
// valid "unknown" header (v1 "PROXY UNKNOWN", v2 PROXY command with an
// unspecified family). A Header is a plain value: copying it shares only
// the TLV values.
type Header struct {
	// Version is V1 (text) or V2 (binary).
	Version Version
	// Local is the version 2 LOCAL command: the connection was opened by
	// the proxy itself (a health check), so the receiver uses the real
	// connection endpoints. Addresses and TLVs of a LOCAL header are not
	// kept.
	Local bool
	// Transport is the client connection's transport.
	Transport Transport
	// Source is the client's address, Destination the address it
	// connected to. Both are valid and of the same family (IPv4 or IPv6),
	// or both are zero: unknown, unspecified or a Unix socket, which the
	// receiver treats as "use the real connection endpoints".
	Source, Destination netip.AddrPort
	// TLVs are the version 2 extensions, in order. Only headers with
	// addresses carry them.
	TLVs []TLV
}

// hasAddrs reports whether h carries addresses.
func (h *Header) hasAddrs() bool {
	return !h.Local && h.Source.IsValid() && h.Destination.IsValid()
}

// addrs returns the addresses in one family: both IPv4 when both are,
// otherwise both in 16-byte form.
func (h *Header) addrs() (src, dst netip.Addr, v4 bool) {
	src, dst = h.Source.Addr(), h.Destination.Addr()
	if src.Is4() && dst.Is4() {
		return src, dst, true
	}
	return netip.AddrFrom16(src.As16()), netip.AddrFrom16(dst.As16()), false
}

// Append appends h's wire form, in its Version (V2 for any value other
// than V1), to b and returns the result. Version 1 writes "PROXY UNKNOWN"
// for a header without addresses or whose transport is not TCP; version
// 2 writes TLVs only after addresses. Addresses of mixed families are
// sent as IPv6 (IPv4-mapped). The TLVs, encoded (3 bytes each plus the
// value), must fit in 65,535 bytes less the address block (12 bytes for
// IPv4, 36 for IPv6); more makes an invalid header. It
// does not allocate when b has room: [V1MaxLen] bytes are enough for any
// header without TLVs.
func (h Header) Append(b []byte) []byte {
	if h.Version == V1 {
		return h.appendV1(b)
	}
	return h.appendV2(b)
}

func (h Header) appendV1(b []byte) []byte {
	b = append(b, v1Sig...)
	if !h.hasAddrs() || h.Transport != TCP {
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

func (h Header) appendV2(b []byte) []byte {
	b = append(b, v2Sig...)
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
