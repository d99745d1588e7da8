package l2lb

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// FuzzProgram runs arbitrary frames through the XDP program and the Go
// model: the program must never fail, and both must agree on the verdict,
// the bytes sent and the backend. Needs root; run with
// go test -fuzz FuzzProgram ./l2lb.
func FuzzProgram(f *testing.F) {
	for _, seed := range [][]byte{
		// Valid frames to each kind of service.
		frame(Flow{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.1:1000"), Dst: vip4}, tcpSYN, nil),
		frame(Flow{Proto: TCP, Src: netip.MustParseAddrPort("[2001:db8::1]:1000"), Dst: vip6}, tcpACK, []byte("x")),
		frame(Flow{Proto: UDP, Src: netip.MustParseAddrPort("198.18.0.1:1000"), Dst: vip4u}, 0, []byte("q")),
		frame(Flow{Proto: UDP, Src: netip.MustParseAddrPort("[2001:db8::1]:1000"), Dst: vip6u}, 0, nil),
		// Not for a service.
		frame(Flow{Proto: TCP, Src: netip.MustParseAddrPort("198.18.0.1:1000"), Dst: netip.MustParseAddrPort("198.18.0.1:80")}, tcpSYN, nil),
		// A bare Ethernet header.
		make([]byte, 14),
	} {
		f.Add(seed)
	}
	tw := newTwin(f)
	fourServices(tw)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			return // the kernel refuses test frames shorter than an Ethernet header
		}
		opts := ebpf.RunOptions{Data: bytes.Clone(in), DataOut: make([]byte, len(in)+256)}
		ret, err := tw.dp.objs.L2lbXdp.Run(&opts)
		if err != nil {
			t.Fatalf("frame %x: %v", in, err)
		}
		v, out := Verdict(ret), opts.DataOut
		d, want := tw.m.Process(in)
		if v != d.Verdict || !bytes.Equal(out, want) {
			t.Fatalf("frame %x: program %v %x, model %v %x", in, v, out, d.Verdict, want)
		}
	})
}
