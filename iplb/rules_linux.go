package iplb

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The layouts below were copied from `nft --debug=netlink` listing rules
// such as
//
//	ip daddr 198.18.0.10 tcp dport 80 counter name "web" jhash ip saddr . tcp sport mod 251 seed 0x1234 vmap @web
//
// in a throwaway namespace. Register numbers are the kernel's: 1-4 are
// the 16-byte registers, 8 and up the 4-byte ones (NFT_REG32_00 = 8), so
// a concatenation "saddr . sport" for jhash is saddr in reg 2 (= 32-bit
// regs 12..15) and sport in the next 4-byte register after it.

// objCounter is NFT_OBJECT_COUNTER, the type of named counters.
const objCounter = unix.NFT_OBJECT_COUNTER

// serviceCounter names a service's counter object.
func serviceCounter(svc string) string { return svc }

// backendName names a backend's chain and its counter object within a
// service: "web/198.18.2.1:8080".
func backendName(svc string, addr netip.AddrPort) string { return svc + "/" + addr.String() }

// slotMap returns the service's slot map: the key is the hash or numgen
// result (a host-endian 32-bit integer), the value the backend's address
// and port, as `typeof numgen inc mod 2 : ip daddr . tcp dport` makes it.
// A plain data map, not a verdict map: writing its elements does not make
// the kernel re-validate the table's jumps, which costs time in
// proportion to every jump element of the table.
func slotMap(t *nftables.Table, svc *Service) *nftables.Set {
	addrType := nftables.TypeIPAddr
	if svc.VIP.Addr().Is6() {
		addrType = nftables.TypeIP6Addr
	}
	return &nftables.Set{
		Table:        t,
		Name:         svc.Name,
		IsMap:        true,
		KeyType:      nftables.TypeMark, // a host-endian 32-bit integer nft can name
		DataType:     nftables.MustConcatSetType(addrType, nftables.TypeInetService),
		KeyByteOrder: binaryutil.NativeEndian,
	}
}

// backendMap returns the service's backend → counter-chain verdict map,
// keyed by the translated destination address and port. It changes only
// with the pool's membership.
func backendMap(t *nftables.Table, svc *Service) *nftables.Set {
	addrType := nftables.TypeIPAddr
	if svc.VIP.Addr().Is6() {
		addrType = nftables.TypeIP6Addr
	}
	return &nftables.Set{
		Table:    t,
		Name:     svc.Name + "/backends",
		IsMap:    true,
		KeyType:  nftables.MustConcatSetType(addrType, nftables.TypeInetService),
		DataType: nftables.TypeVerdict,
	}
}

// slotKey encodes slot i as a slot map key.
func slotKey(i int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(i)) }

// addrPortData encodes addr . port as a concatenation: the address, then
// the port in network order padded to 4 bytes.
func addrPortData(addr netip.AddrPort) []byte {
	return append(append(addr.Addr().AsSlice(), be16(addr.Port())...), 0, 0)
}

// slotElem maps slot i to backend addr.
func slotElem(i int, addr netip.AddrPort) nftables.SetElement {
	return nftables.SetElement{Key: slotKey(i), Val: addrPortData(addr)}
}

// backendElem maps backend addr to a jump into its counter chain.
func backendElem(svc string, addr netip.AddrPort) nftables.SetElement {
	return nftables.SetElement{Key: addrPortData(addr), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: backendName(svc, addr)}}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func nfproto(a netip.Addr) byte {
	if a.Is4() {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

// portReg is the 4-byte register that follows an address loaded into a
// 16-byte register r: the second half of a concatenation.
func portReg(r uint32, v6 bool) uint32 {
	if v6 {
		return r + 1 // the next 16-byte register
	}
	return unix.NFT_REG32_00 + (r-1)*4 + 1
}

// serviceExprs matches the service's VIP, protocol and port, counts the
// new flow, computes its slot (jhash of source address and port, or
// numgen) mod size, looks the backend up in the slot map and DNATs there.
// A miss (no ready backend) falls through: the packet goes on to the
// balancer itself.
func serviceExprs(svc *Service, set *nftables.Set, size int) []expr.Any {
	vip := svc.VIP.Addr()
	v6 := vip.Is6()
	dstOff, srcOff, alen := uint32(16), uint32(12), uint32(4)
	if v6 {
		dstOff, srcOff, alen = 24, 8, 16
	}
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto(vip)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: dstOff, Len: alen},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vip.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(svc.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(svc.VIP.Port())},
		&expr.Objref{Type: objCounter, Name: serviceCounter(svc.Name)},
	}
	switch h, bits := svc.hashing(); h {
	case hashNone:
		ex = append(ex, &expr.Numgen{Register: 1, Modulus: uint32(size), Type: unix.NFT_NG_INCREMENTAL})
	case hashFlow:
		ex = append(ex,
			&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: srcOff, Len: alen},
			&expr.Payload{DestRegister: portReg(2, v6), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: 2, DestRegister: 1, Length: alen + 4, Modulus: uint32(size), Seed: svc.Seed, Type: expr.HashTypeJenkins},
		)
	case hashClient:
		ex = append(ex, &expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: srcOff, Len: alen})
		if bits > 0 {
			// jhash ip saddr and 255.255.255.0
			mask := make([]byte, alen)
			for i := range bits {
				mask[i/8] |= 0x80 >> (i % 8)
			}
			ex = append(ex, &expr.Bitwise{SourceRegister: 2, DestRegister: 2, Len: alen, Mask: mask, Xor: make([]byte, alen)})
		}
		ex = append(ex, &expr.Hash{SourceRegister: 2, DestRegister: 1, Length: alen, Modulus: uint32(size), Seed: svc.Seed, Type: expr.HashTypeJenkins})
	}
	return append(ex,
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: uint32(nfproto(vip)),
			RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: portReg(1, v6), RegProtoMax: portReg(1, v6), Specified: true,
		},
	)
}

// counterExprs count a new flow for one backend (its chain's only rule).
func counterExprs(svc string, addr netip.AddrPort) []expr.Any {
	return []expr.Any{&expr.Objref{Type: objCounter, Name: backendName(svc, addr)}}
}

// originalExprs match, in postrouting, the flows whose original
// destination was the service (the first packet only: conntrack does the
// rest). In an inet table "ct original daddr" loads 16 bytes for both
// families (an IPv4 address followed by zeros), so they check the layer-3
// protocol first.
func originalExprs(svc *Service) []expr.Any {
	vip := svc.VIP.Addr()
	// The kernel loads 16 bytes; comparing only the IPv4 address's 4 keeps
	// the rule printable: nft list crashes (stack smashing) on a 16-byte
	// compare it reads as "ct original ip daddr".
	dst := vip.AsSlice()
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyL3PROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto(vip)}},
		&expr.Ct{Key: expr.CtKeyDST, Direction: dirOriginal, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst},
		&expr.Ct{Key: expr.CtKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(svc.Proto)}},
		&expr.Ct{Key: expr.CtKeyPROTODST, Direction: dirOriginal, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(svc.VIP.Port())},
	}
}

// countExprs, in postrouting, jump to the counter chain of the backend
// the flow was translated to: `ip daddr . th dport vmap @svc/backends`.
func countExprs(svc *Service, set *nftables.Set) []expr.Any {
	v6 := svc.VIP.Addr().Is6()
	off, alen := uint32(16), uint32(4)
	if v6 {
		off, alen = 24, 16
	}
	return append(originalExprs(svc),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen},
		&expr.Payload{DestRegister: portReg(1, v6), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
	)
}

// fullNATExprs, in postrouting, source-NAT the service's flows.
func fullNATExprs(svc *Service) []expr.Any {
	ex := originalExprs(svc)
	if !svc.SNAT.IsValid() {
		return append(ex, &expr.Masq{})
	}
	return append(ex,
		&expr.Immediate{Register: 1, Data: svc.SNAT.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(nfproto(svc.SNAT)), RegAddrMin: 1, RegAddrMax: 1},
	)
}

// anchorExprs are `ct state invalid`, the postrouting chain's first rule,
// which never matches (invalid packets do not reach nat chains). It is
// there for its ct expression: nftables switches connection tracking on
// in a namespace only while some rule's expression needs it, and turns
// it off (unregistering its hooks, some 20 ms after the commit) once the
// last such rule is gone. Established flows then lose their translation
// and are reset, as measured when a drain emptied both hook chains. This
// rule keeps conntrack on while the table exists, whatever the services.
func anchorExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(1), // NF_CT_STATE_INVALID_BIT
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// dirOriginal is IP_CT_DIR_ORIGINAL: the conntrack tuple as the client
// sent it.
const dirOriginal = 0
