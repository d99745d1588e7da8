package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProxyProtoV1(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ProxyProtoHeader
		n    int
		err  error
	}{
		{"tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\npayload",
			ProxyProtoHeader{Version: 1, Transport: ProxyProtoTCP,
				Source:      netip.MustParseAddrPort("192.0.2.1:56324"),
				Destination: netip.MustParseAddrPort("198.51.100.2:443")}, 45, nil},
		{"tcp6", "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
			ProxyProtoHeader{Version: 1, Transport: ProxyProtoTCP,
				Source:      netip.MustParseAddrPort("[2001:db8::1]:1"),
				Destination: netip.MustParseAddrPort("[::1]:65535")}, 36, nil},
		{"unknown", "PROXY UNKNOWN\r\n", ProxyProtoHeader{Version: 1}, 15, nil},
		{"unknown with junk", "PROXY UNKNOWN ff:: 1.2.3.4 x y\r\n", ProxyProtoHeader{Version: 1}, 32, nil},
		{"max length", "PROXY UNKNOWN " + strings.Repeat("x", ProxyProtoV1MaxLen-16) + "\r\n", ProxyProtoHeader{Version: 1}, ProxyProtoV1MaxLen, nil},
		{"empty", "", ProxyProtoHeader{}, 0, ErrProxyProtoIncomplete},
		{"partial signature", "PRO", ProxyProtoHeader{}, 0, ErrProxyProtoIncomplete},
		{"partial line", "PROXY TCP4 192.0.2.1", ProxyProtoHeader{}, 0, ErrProxyProtoIncomplete},
		{"partial CR", "PROXY UNKNOWN\r", ProxyProtoHeader{}, 0, ErrProxyProtoIncomplete},
		{"too long", "PROXY UNKNOWN " + strings.Repeat("x", 200), ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"bare LF", "PROXY UNKNOWN\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"bare CR", "PROXY UNKNOWN\rX", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"lower case", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"bad proto", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"family mismatch", "PROXY TCP4 ::1 ::1 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"mixed families", "PROXY TCP6 ::1 1.2.3.4 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"port too big", "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"leading zero", "PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"signed port", "PROXY TCP4 1.2.3.4 1.2.3.4 +80 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"double space", "PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"missing port", "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
		{"not proxy", "GET / HTTP/1.1\r\n", ProxyProtoHeader{}, 0, ErrProxyProtoInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := ParseProxyProtoHeader([]byte(tt.in))
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.n, n)
			if diff := cmp.Diff(tt.want, h, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
		})
	}
}

func ppV2(verCmd, fam byte, body ...byte) []byte {
	b := append([]byte{}, ppV2Sig...)
	b = append(b, verCmd, fam, byte(len(body)>>8), byte(len(body)))
	return append(b, body...)
}

func TestProxyProtoV2(t *testing.T) {
	v4body := []byte{192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb}
	tlvs := []byte{0x01, 0, 2, 'h', '2', 0x04, 0, 0}
	v6 := make([]byte, 36)
	v6[15], v6[31], v6[33], v6[35] = 1, 2, 80, 81
	tests := []struct {
		name string
		in   []byte
		want ProxyProtoHeader
		err  error
	}{
		{"tcp4", ppV2(0x21, 0x11, v4body...), ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP,
			Source: netip.MustParseAddrPort("192.0.2.1:56324"), Destination: netip.MustParseAddrPort("198.51.100.2:443")}, nil},
		{"udp6", ppV2(0x21, 0x22, v6...), ProxyProtoHeader{Version: 2, Transport: ProxyProtoUDP,
			Source: netip.MustParseAddrPort("[::1]:80"), Destination: netip.MustParseAddrPort("[::2]:81")}, nil},
		{"tlvs", ppV2(0x21, 0x11, append(v4body, tlvs...)...), ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP,
			Source: netip.MustParseAddrPort("192.0.2.1:56324"), Destination: netip.MustParseAddrPort("198.51.100.2:443"),
			TLVs: []ProxyProtoTLV{{Type: 1, Value: []byte("h2")}, {Type: 4, Value: []byte{}}}}, nil},
		{"local", ppV2(0x20, 0x11, v4body...), ProxyProtoHeader{Version: 2, Local: true}, nil},
		{"unspec", ppV2(0x21, 0x00, 1, 2, 3), ProxyProtoHeader{Version: 2}, nil},
		{"unix", ppV2(0x21, 0x31, make([]byte, 216)...), ProxyProtoHeader{Version: 2}, nil},
		{"partial signature", ppV2Sig[:5], ProxyProtoHeader{}, ErrProxyProtoIncomplete},
		{"partial header", ppV2(0x21, 0x11, v4body...)[:15], ProxyProtoHeader{}, ErrProxyProtoIncomplete},
		{"partial body", ppV2(0x21, 0x11, v4body...)[:20], ProxyProtoHeader{}, ErrProxyProtoIncomplete},
		{"bad signature", append([]byte("\r\n\r\n\x00\r\nQUIT\r"), 0x21, 0x11, 0, 0), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"version 1 in binary", ppV2(0x11, 0x11, v4body...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"bad command", ppV2(0x22, 0x11, v4body...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"bad family", ppV2(0x21, 0x41, v4body...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"bad transport", ppV2(0x21, 0x13, v4body...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"short addresses", ppV2(0x21, 0x21, v4body...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"truncated tlv", ppV2(0x21, 0x11, append(v4body, 1, 0)...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
		{"tlv overrun", ppV2(0x21, 0x11, append(v4body, 1, 0, 9, 'x')...), ProxyProtoHeader{}, ErrProxyProtoInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append(bytes.Clone(tt.in), "payload"...)
			if tt.err == ErrProxyProtoIncomplete {
				in = tt.in
			}
			h, n, err := ParseProxyProtoHeader(in)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, len(tt.in), n)
			if diff := cmp.Diff(tt.want, h, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProxyProtoRoundTrip(t *testing.T) {
	v4a, v4b := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:80")
	v6a, v6b := netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:65535")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:198.18.0.1"), 5)
	headers := []ProxyProtoHeader{
		{Transport: ProxyProtoTCP, Source: v4a, Destination: v4b},
		{Transport: ProxyProtoTCP, Source: v6a, Destination: v6b},
		{Transport: ProxyProtoTCP, Source: mapped, Destination: v6b},
		{},
	}
	for _, h := range headers {
		for _, v := range []uint8{1, 2} {
			h.Version = v
			b := h.Append(nil)
			got, n, err := ParseProxyProtoHeader(b)
			require.NoError(t, err, "%q", b)
			assert.Equal(t, len(b), n)
			assert.Equal(t, h, got, "%q", b)
		}
	}
	v2only := []ProxyProtoHeader{
		{Version: 2, Transport: ProxyProtoUDP, Source: v6a, Destination: v6b, TLVs: []ProxyProtoTLV{{Type: 0xEA, Value: []byte("id")}}},
		{Version: 2, Local: true},
		{Version: 2, Source: v4a, Destination: v4b},
	}
	for _, h := range v2only {
		got, _, err := ParseProxyProtoHeader(h.Append(nil))
		require.NoError(t, err)
		assert.Equal(t, h, got)
	}

	// Mixed families are sent as IPv6.
	mixed := ProxyProtoHeader{Version: 1, Transport: ProxyProtoTCP, Source: v4a, Destination: v6b}
	assert.Equal(t, "PROXY TCP6 ::ffff:198.18.0.1 2001:db8::2 40000 65535\r\n", string(mixed.Append(nil)))
	assert.Len(t, ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP, Source: v6a, Destination: v6b}.Append(nil), ProxyProtoV2MaxAddrLen)
	assert.Equal(t, "PROXY UNKNOWN\r\n", string(ProxyProtoHeader{Version: 1, Transport: ProxyProtoUDP, Source: v4a, Destination: v4b}.Append(nil)))
}

func TestReadProxyProtoHeader(t *testing.T) {
	h := ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP,
		Source: netip.MustParseAddrPort("198.18.0.1:1"), Destination: netip.MustParseAddrPort("198.18.0.2:2")}
	for _, v := range []uint8{1, 2} {
		h.Version = v
		wire := append(h.Append(nil), "hello"...)
		// One byte at a time: the reader must wait for the whole header.
		r := bufio.NewReader(io.MultiReader(ppBytewise(wire)...))
		got, err := ReadProxyProtoHeader(r)
		require.NoError(t, err)
		assert.Equal(t, h, got)
		rest, _ := io.ReadAll(r)
		assert.Equal(t, "hello", string(rest))
	}

	_, err := ReadProxyProtoHeader(bufio.NewReader(strings.NewReader("PROXY TCP4 1.2")))
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	_, err = ReadProxyProtoHeader(bufio.NewReader(strings.NewReader("HELLO")))
	assert.ErrorIs(t, err, ErrProxyProtoInvalid)

	big := ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP, Source: h.Source, Destination: h.Destination,
		TLVs: []ProxyProtoTLV{{Type: 1, Value: make([]byte, 100)}}}
	_, err = ReadProxyProtoHeader(bufio.NewReaderSize(bytes.NewReader(big.Append(nil)), 16))
	assert.ErrorIs(t, err, ErrProxyProtoInvalid)
	assert.False(t, errors.Is(err, ErrProxyProtoIncomplete))
}

func ppBytewise(b []byte) []io.Reader {
	rs := make([]io.Reader, len(b))
	for i := range b {
		rs[i] = bytes.NewReader(b[i : i+1])
	}
	return rs
}

func TestProxyProtoAppendAllocs(t *testing.T) {
	h := ProxyProtoHeader{Version: 2, Transport: ProxyProtoTCP,
		Source: netip.MustParseAddrPort("[2001:db8::1]:1"), Destination: netip.MustParseAddrPort("[2001:db8::2]:2")}
	var buf [ProxyProtoV1MaxLen]byte
	for _, v := range []uint8{1, 2} {
		h.Version = v
		assert.Zero(t, testing.AllocsPerRun(100, func() { h.Append(buf[:0]) }))
	}
}

// FuzzProxyProtoParse checks that the parser never panics, that a parsed
// header's length is within the input, and the round trip: a parsed
// header re-encoded in its own version parses back to the same header.
func FuzzProxyProtoParse(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n")) // port overflow
	f.Add(ppV2(0x21, 0x11, 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb, 1, 0, 2, 'h', '2'))
	f.Add(ppV2(0x20, 0x00))
	f.Add(ppV2(0x21, 0x21, make([]byte, 36)...))
	f.Add(ppV2(0x21, 0x11, 1, 2, 3)) // short address block
	f.Add(ppV2Sig[:7])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseProxyProtoHeader(b)
		if err != nil {
			if !errors.Is(err, ErrProxyProtoIncomplete) && !errors.Is(err, ErrProxyProtoInvalid) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("length %d outside input of %d", n, len(b))
		}
		if h.Version == 1 && n > ProxyProtoV1MaxLen {
			t.Fatalf("v1 header of %d bytes", n)
		}
		again, m, err := ParseProxyProtoHeader(h.Append(nil))
		if err != nil {
			t.Fatalf("re-encoded header does not parse: %v (%+v)", err, h)
		}
		if m != len(h.Append(nil)) {
			t.Fatalf("re-encoded length %d, parsed %d", len(h.Append(nil)), m)
		}
		if diff := cmp.Diff(h, again, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

func ExampleProxyProtoHeader_Append() {
	h := ProxyProtoHeader{
		Version:     1,
		Transport:   ProxyProtoTCP,
		Source:      netip.MustParseAddrPort("198.18.0.7:51234"),
		Destination: netip.MustParseAddrPort("198.18.0.1:443"),
	}
	fmt.Printf("%q\n", h.Append(nil))
	h.Version = 2
	fmt.Printf("% x\n", h.Append(nil)[12:])
	// Output:
	// "PROXY TCP4 198.18.0.7 198.18.0.1 51234 443\r\n"
	// 21 11 00 0c c6 12 00 07 c6 12 00 01 c8 22 01 bb
}

func ExampleReadProxyProtoHeader() {
	conn := strings.NewReader("PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\nGET / HTTP/1.1\r\n")
	br := bufio.NewReader(conn)
	h, err := ReadProxyProtoHeader(br)
	if err != nil {
		panic(err)
	}
	rest, _ := br.ReadString('\n')
	fmt.Println(h.Source, "→", h.Destination)
	fmt.Printf("%q\n", rest)
	// Output:
	// [2001:db8::7]:51234 → [2001:db8::1]:443
	// "GET / HTTP/1.1\r\n"
}
