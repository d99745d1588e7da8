package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// cmpAddrs compares netip values (whose fields are unexported) by value.
var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

// FuzzParse feeds arbitrary bytes to Parse. Properties: it never panics;
// every error is ErrIncomplete or ErrInvalid; a header's length is within
// the input (at most V1MaxLen for version 1); every proper prefix of a
// header is ErrIncomplete (the parser never decides before it has the
// whole header); Read over a reader that returns one byte at a time
// agrees with Parse; and the round trip: the header re-encoded in its own
// version parses back to the same header, of the encoded length.
func FuzzParse(f *testing.F) {
	// Version 1, IPv4, with payload after the header.
	f.Add([]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /"))
	// Version 1, IPv6, extreme ports.
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"))
	// Version 1 UNKNOWN, with the junk the specification allows after it.
	f.Add([]byte("PROXY UNKNOWN ff:: 1.2.3.4 x y\r\n"))
	// Version 1 with a port one past the maximum.
	f.Add([]byte("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n"))
	// Version 1 with an IPv4-mapped address under TCP6.
	f.Add([]byte("PROXY TCP6 ::ffff:198.18.0.1 2001:db8::2 1 2\r\n"))
	// Version 1 with a bare CR inside the line.
	f.Add([]byte("PROXY UNKNOWN\rX\r\n"))
	// Version 2 PROXY over TCP/IPv4 with an ALPN TLV "h2".
	f.Add(v2(0x21, 0x11, 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb, TypeALPN, 0, 2, 'h', '2'))
	// Version 2 LOCAL (a health check from the proxy itself).
	f.Add(v2(0x20, 0x00))
	// Version 2 PROXY over UDP/IPv6 with zero addresses.
	f.Add(v2(0x21, 0x22, make([]byte, 36)...))
	// Version 2 Unix family: parses as "use the real endpoints".
	f.Add(v2(0x21, 0x31, make([]byte, 216)...))
	// Version 2 whose address block is shorter than its family needs.
	f.Add(v2(0x21, 0x11, 1, 2, 3))
	// Version 2 whose TLV claims more bytes than the header has.
	f.Add(v2(0x21, 0x11, 192, 0, 2, 1, 198, 51, 100, 2, 0, 1, 0, 2, TypeNoop, 0, 9, 'x'))
	// A partial version 2 signature.
	f.Add(v2Sig[:7])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("unexpected error kind: %v", err)
			}
		} else if n <= 0 || n > len(b) || (h.Version == V1 && n > V1MaxLen) {
			t.Fatalf("version %v header of %d bytes in an input of %d", h.Version, n, len(b))
		}

		got, rerr := Read(bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(b)), 16+0xffff))
		switch {
		case err == nil && rerr != nil:
			t.Fatalf("Parse took %d bytes, Read failed: %v", n, rerr)
		case err == nil:
			if diff := cmp.Diff(h, got, cmpAddrs); diff != "" {
				t.Fatalf("Read and Parse differ (-parse +read):\n%s", diff)
			}
		case errors.Is(err, ErrIncomplete) && !errors.Is(rerr, io.ErrUnexpectedEOF):
			t.Fatalf("Parse: incomplete; Read: %v", rerr)
		case errors.Is(err, ErrInvalid) && !errors.Is(rerr, ErrInvalid):
			t.Fatalf("Parse: %v; Read: %v", err, rerr)
		}
		if err != nil {
			return
		}

		for k := range n {
			if _, _, err := Parse(b[:k]); !errors.Is(err, ErrIncomplete) {
				t.Fatalf("prefix of %d of a %d-byte header: %v", k, n, err)
			}
		}

		wire := h.Append(nil)
		again, m, err := Parse(wire)
		if err != nil {
			t.Fatalf("re-encoded header %q does not parse: %v (%+v)", wire, err, h)
		}
		if m != len(wire) {
			t.Fatalf("re-encoded length %d, parsed %d", len(wire), m)
		}
		if diff := cmp.Diff(h, again, cmpAddrs); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// FuzzAppend builds a header from arbitrary fields, encodes it and parses
// it back. Property: the parsed header is the one the encoder promises
// (see sent): version 1 keeps only TCP addresses, LOCAL and address-less
// headers keep nothing, mixed address families come back as IPv6, and
// everything else survives unchanged.
func FuzzAppend(f *testing.F) {
	v4 := netip.MustParseAddr("198.18.0.1").AsSlice()
	v6 := netip.MustParseAddr("2001:db8::2").AsSlice()
	// Version 1 over TCP/IPv4.
	f.Add(uint8(1), false, uint8(TCP), v4, v4, uint16(40000), uint16(80), uint8(0), []byte(nil))
	// Version 1 over UDP: written as UNKNOWN.
	f.Add(uint8(1), false, uint8(UDP), v4, v4, uint16(1), uint16(2), uint8(0), []byte(nil))
	// Version 2, mixed families, with a unique-ID TLV.
	f.Add(uint8(2), false, uint8(TCP), v4, v6, uint16(1), uint16(65535), TypeUniqueID, []byte("conn-7"))
	// Version 2 LOCAL: addresses and TLVs dropped.
	f.Add(uint8(2), true, uint8(TCP), v6, v6, uint16(1), uint16(2), TypeALPN, []byte("h2"))
	// Version 2 without addresses (src has no valid length).
	f.Add(uint8(2), false, uint8(Unspec), []byte{1}, v4, uint16(0), uint16(0), TypeNoop, []byte{})
	f.Fuzz(func(t *testing.T, version uint8, local bool, transport uint8, src, dst []byte, sport, dport uint16, tlvType uint8, tlvValue []byte) {
		h := Header{
			Version:     Version(version%2 + 1),
			Local:       local,
			Transport:   Transport(transport % 3),
			Source:      addrPort(src, sport),
			Destination: addrPort(dst, dport),
		}
		if tlvValue != nil && len(tlvValue) <= 0xffff-36-3 {
			h.TLVs = []TLV{{Type: tlvType, Value: tlvValue}}
		}
		wire := h.Append(nil)
		got, n, err := Parse(wire)
		if err != nil {
			t.Fatalf("%q: %v", wire, err)
		}
		if n != len(wire) {
			t.Fatalf("parsed %d of %d bytes", n, len(wire))
		}
		if diff := cmp.Diff(sent(h), got, cmpAddrs); diff != "" {
			t.Fatalf("%q (-want +got):\n%s", wire, diff)
		}
	})
}

// addrPort returns b as an address (4 or 16 bytes) with port p, or the
// zero value for any other length.
func addrPort(b []byte, p uint16) netip.AddrPort {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, p)
}

// sent is what a receiver parses from h.Append: the documented encoding
// rules written as a model.
func sent(h Header) Header {
	switch {
	case h.Version == V1 && (!h.hasAddrs() || h.Transport != TCP):
		return Header{Version: V1}
	case h.Local:
		return Header{Version: V2, Local: true}
	case !h.hasAddrs():
		return Header{Version: V2}
	}
	src, dst, _ := h.addrs()
	h.Source = netip.AddrPortFrom(src, h.Source.Port())
	h.Destination = netip.AddrPortFrom(dst, h.Destination.Port())
	if h.Version == V1 {
		h.TLVs = nil
	}
	return h
}
