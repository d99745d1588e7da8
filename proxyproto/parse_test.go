package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseV1(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Header
		n    int
		err  error
	}{
		{"tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\npayload",
			Header{Version: 1, Transport: TCP,
				Source:      netip.MustParseAddrPort("192.0.2.1:56324"),
				Destination: netip.MustParseAddrPort("198.51.100.2:443")}, 45, nil},
		{"tcp6", "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
			Header{Version: 1, Transport: TCP,
				Source:      netip.MustParseAddrPort("[2001:db8::1]:1"),
				Destination: netip.MustParseAddrPort("[::1]:65535")}, 36, nil},
		{"unknown", "PROXY UNKNOWN\r\n", Header{Version: 1}, 15, nil},
		{"unknown with junk", "PROXY UNKNOWN ff:: 1.2.3.4 x y\r\n", Header{Version: 1}, 32, nil},
		{"max length", "PROXY UNKNOWN " + strings.Repeat("x", V1MaxLen-16) + "\r\n", Header{Version: 1}, V1MaxLen, nil},
		{"empty", "", Header{}, 0, ErrIncomplete},
		{"partial signature", "PRO", Header{}, 0, ErrIncomplete},
		{"partial line", "PROXY TCP4 192.0.2.1", Header{}, 0, ErrIncomplete},
		{"partial CR", "PROXY UNKNOWN\r", Header{}, 0, ErrIncomplete},
		{"too long", "PROXY UNKNOWN " + strings.Repeat("x", 200), Header{}, 0, ErrInvalid},
		{"bare LF", "PROXY UNKNOWN\n", Header{}, 0, ErrInvalid},
		{"bare CR", "PROXY UNKNOWN\rX", Header{}, 0, ErrInvalid},
		// Found by FuzzParse: a bare CR followed later by a CR at the end
		// was reported as incomplete, though no more bytes could fix it.
		{"bare CR then CR", "PROXY \r0\r", Header{}, 0, ErrInvalid},
		// Found by FuzzParse: a bare CR in an UNKNOWN line's junk was
		// accepted once the line was complete but refused as a prefix.
		{"bare CR in junk", "PROXY UNKNOWN \r\r\n", Header{}, 0, ErrInvalid},
		{"lower case", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", Header{}, 0, ErrInvalid},
		{"bad proto", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", Header{}, 0, ErrInvalid},
		{"family mismatch", "PROXY TCP4 ::1 ::1 1 2\r\n", Header{}, 0, ErrInvalid},
		{"mixed families", "PROXY TCP6 ::1 1.2.3.4 1 2\r\n", Header{}, 0, ErrInvalid},
		{"port too big", "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", Header{}, 0, ErrInvalid},
		{"leading zero", "PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", Header{}, 0, ErrInvalid},
		{"signed port", "PROXY TCP4 1.2.3.4 1.2.3.4 +80 2\r\n", Header{}, 0, ErrInvalid},
		{"double space", "PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", Header{}, 0, ErrInvalid},
		{"zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", Header{}, 0, ErrInvalid},
		{"missing port", "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", Header{}, 0, ErrInvalid},
		{"not proxy", "GET / HTTP/1.1\r\n", Header{}, 0, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := Parse([]byte(tt.in))
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

func v2(verCmd, fam byte, body ...byte) []byte {
	b := append([]byte{}, v2Sig...)
	b = append(b, verCmd, fam, byte(len(body)>>8), byte(len(body)))
	return append(b, body...)
}

func TestParseV2(t *testing.T) {
	v4body := []byte{192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb}
	tlvs := []byte{0x01, 0, 2, 'h', '2', 0x04, 0, 0}
	v6 := make([]byte, 36)
	v6[15], v6[31], v6[33], v6[35] = 1, 2, 80, 81
	tests := []struct {
		name string
		in   []byte
		want Header
		err  error
	}{
		{"tcp4", v2(0x21, 0x11, v4body...), Header{Version: 2, Transport: TCP,
			Source: netip.MustParseAddrPort("192.0.2.1:56324"), Destination: netip.MustParseAddrPort("198.51.100.2:443")}, nil},
		{"udp6", v2(0x21, 0x22, v6...), Header{Version: 2, Transport: UDP,
			Source: netip.MustParseAddrPort("[::1]:80"), Destination: netip.MustParseAddrPort("[::2]:81")}, nil},
		{"tlvs", v2(0x21, 0x11, append(v4body, tlvs...)...), Header{Version: 2, Transport: TCP,
			Source: netip.MustParseAddrPort("192.0.2.1:56324"), Destination: netip.MustParseAddrPort("198.51.100.2:443"),
			TLVs: []TLV{{Type: 1, Value: []byte("h2")}, {Type: 4, Value: []byte{}}}}, nil},
		{"local", v2(0x20, 0x11, v4body...), Header{Version: 2, Local: true}, nil},
		{"unspec", v2(0x21, 0x00, 1, 2, 3), Header{Version: 2}, nil},
		{"unix", v2(0x21, 0x31, make([]byte, 216)...), Header{Version: 2}, nil},
		{"partial signature", v2Sig[:5], Header{}, ErrIncomplete},
		{"partial header", v2(0x21, 0x11, v4body...)[:15], Header{}, ErrIncomplete},
		{"partial body", v2(0x21, 0x11, v4body...)[:20], Header{}, ErrIncomplete},
		{"bad signature", append([]byte("\r\n\r\n\x00\r\nQUIT\r"), 0x21, 0x11, 0, 0), Header{}, ErrInvalid},
		{"version 1 in binary", v2(0x11, 0x11, v4body...), Header{}, ErrInvalid},
		{"bad command", v2(0x22, 0x11, v4body...), Header{}, ErrInvalid},
		{"bad family", v2(0x21, 0x41, v4body...), Header{}, ErrInvalid},
		{"bad transport", v2(0x21, 0x13, v4body...), Header{}, ErrInvalid},
		{"short addresses", v2(0x21, 0x21, v4body...), Header{}, ErrInvalid},
		{"truncated tlv", v2(0x21, 0x11, append(v4body, 1, 0)...), Header{}, ErrInvalid},
		{"tlv overrun", v2(0x21, 0x11, append(v4body, 1, 0, 9, 'x')...), Header{}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append(bytes.Clone(tt.in), "payload"...)
			if tt.err == ErrIncomplete {
				in = tt.in
			}
			h, n, err := Parse(in)
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

func TestRoundTrip(t *testing.T) {
	v4a, v4b := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:80")
	v6a, v6b := netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:65535")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:198.18.0.1"), 5)
	headers := []Header{
		{Transport: TCP, Source: v4a, Destination: v4b},
		{Transport: TCP, Source: v6a, Destination: v6b},
		{Transport: TCP, Source: mapped, Destination: v6b},
		{},
	}
	for _, h := range headers {
		for _, v := range []Version{V1, V2} {
			h.Version = v
			b := h.Append(nil)
			got, n, err := Parse(b)
			require.NoError(t, err, "%q", b)
			assert.Equal(t, len(b), n)
			assert.Equal(t, h, got, "%q", b)
		}
	}
	v2only := []Header{
		{Version: 2, Transport: UDP, Source: v6a, Destination: v6b, TLVs: []TLV{{Type: 0xEA, Value: []byte("id")}}},
		{Version: 2, Local: true},
		{Version: 2, Source: v4a, Destination: v4b},
	}
	for _, h := range v2only {
		got, _, err := Parse(h.Append(nil))
		require.NoError(t, err)
		assert.Equal(t, h, got)
	}

	// Mixed families are sent as IPv6.
	mixed := Header{Version: 1, Transport: TCP, Source: v4a, Destination: v6b}
	assert.Equal(t, "PROXY TCP6 ::ffff:198.18.0.1 2001:db8::2 40000 65535\r\n", string(mixed.Append(nil)))
	assert.Len(t, Header{Version: 2, Transport: TCP, Source: v6a, Destination: v6b}.Append(nil), V2MaxAddrLen)
	assert.Equal(t, "PROXY UNKNOWN\r\n", string(Header{Version: 1, Transport: UDP, Source: v4a, Destination: v4b}.Append(nil)))
}

func TestRead(t *testing.T) {
	h := Header{Version: 2, Transport: TCP,
		Source: netip.MustParseAddrPort("198.18.0.1:1"), Destination: netip.MustParseAddrPort("198.18.0.2:2")}
	for _, v := range []Version{V1, V2} {
		h.Version = v
		wire := append(h.Append(nil), "hello"...)
		// One byte at a time: the reader must wait for the whole header.
		r := bufio.NewReader(io.MultiReader(bytewise(wire)...))
		got, err := Read(r)
		require.NoError(t, err)
		assert.Equal(t, h, got)
		rest, _ := io.ReadAll(r)
		assert.Equal(t, "hello", string(rest))
	}

	_, err := Read(bufio.NewReader(strings.NewReader("PROXY TCP4 1.2")))
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	_, err = Read(bufio.NewReader(strings.NewReader("HELLO")))
	assert.ErrorIs(t, err, ErrInvalid)

	big := Header{Version: 2, Transport: TCP, Source: h.Source, Destination: h.Destination,
		TLVs: []TLV{{Type: 1, Value: make([]byte, 100)}}}
	_, err = Read(bufio.NewReaderSize(bytes.NewReader(big.Append(nil)), 16))
	assert.ErrorIs(t, err, ErrInvalid)
	assert.False(t, errors.Is(err, ErrIncomplete))
}

func bytewise(b []byte) []io.Reader {
	rs := make([]io.Reader, len(b))
	for i := range b {
		rs[i] = bytes.NewReader(b[i : i+1])
	}
	return rs
}

func TestAppendAllocs(t *testing.T) {
	h := Header{Version: 2, Transport: TCP,
		Source: netip.MustParseAddrPort("[2001:db8::1]:1"), Destination: netip.MustParseAddrPort("[2001:db8::2]:2")}
	var buf [V1MaxLen]byte
	for _, v := range []Version{V1, V2} {
		h.Version = v
		assert.Zero(t, testing.AllocsPerRun(100, func() { h.Append(buf[:0]) }))
	}
}

func TestVersionText(t *testing.T) {
	for _, v := range []Version{0, V1, V2} {
		b, err := v.MarshalText()
		require.NoError(t, err)
		var got Version
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, v, got, "%s", b)
		assert.Equal(t, v.String(), string(b))
	}
	for in, want := range map[string]Version{"": 0, "1": V1, "2": V2} {
		var got Version
		require.NoError(t, got.UnmarshalText([]byte(in)))
		assert.Equal(t, want, got, in)
	}
	var v Version
	err := v.UnmarshalText([]byte("v3"))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "proxyproto: "), err.Error())
	_, err = Version(3).MarshalText()
	assert.Error(t, err)
	assert.Equal(t, "v3", Version(3).String())
}

func TestTransportText(t *testing.T) {
	for _, tr := range []Transport{Unspec, TCP, UDP} {
		b, err := tr.MarshalText()
		require.NoError(t, err)
		var got Transport
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, tr, got, "%s", b)
		assert.Equal(t, tr.String(), string(b))
	}
	assert.Equal(t, "tcp", TCP.String())
	var tr Transport
	assert.Error(t, tr.UnmarshalText([]byte("sctp")))
	_, err := Transport(3).MarshalText()
	assert.Error(t, err)
	assert.Equal(t, "transport(3)", Transport(3).String())
}
