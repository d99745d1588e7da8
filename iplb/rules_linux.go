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

// slotMap returns the service's slot → verdict map: the key is the hash
// or numgen result, a host-endian 32-bit integer.
func slotMap(t *nftables.Table, svc string) *nftables.Set {
	return &nftables.Set{
		Table:        t,
		Name:         svc,
		IsMap:        true,
		KeyType:      nftables.TypeInteger,
		DataType:     nftables.TypeVerdict,
		KeyByteOrder: binaryutil.NativeEndian,
	}
}

// slotKey encodes slot i as a map key.
func slotKey(i int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(i)) }

// jumpElem maps slot i to a jump into chain.
func jumpElem(i int, chain string) nftables.SetElement {
	return nftables.SetElement{Key: slotKey(i), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func nfproto(a netip.Addr) byte {
	if a.Is4() {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

// serviceExprs matches the service's VIP, protocol and port, counts the
// new flow, computes its slot (jhash of source address and port, or
// numgen) mod size and jumps through the slot map. A miss (no ready
// backend) falls through: the packet goes on to the balancer itself.
func serviceExprs(svc *Service, set *nftables.Set, size int) []expr.Any {
	vip := svc.VIP.Addr()
	dstOff, srcOff, alen, portReg := uint32(16), uint32(12), uint32(4), uint32(unix.NFT_REG32_05)
	if vip.Is6() {
		dstOff, srcOff, alen, portReg = 24, 8, 16, unix.NFT_REG32_08
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
	if svc.Scheduler == RoundRobin {
		ex = append(ex, &expr.Numgen{Register: 1, Modulus: uint32(size), Type: unix.NFT_NG_INCREMENTAL})
	} else {
		ex = append(ex,
			&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: srcOff, Len: alen},
			&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: 2, DestRegister: 1, Length: alen + 4, Modulus: uint32(size), Seed: svc.Seed, Type: expr.HashTypeJenkins},
		)
	}
	return append(ex, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID})
}

// backendExprs count a new flow for the backend and DNAT it there.
func backendExprs(svc *Service, addr netip.AddrPort) []expr.Any {
	return []expr.Any{
		&expr.Objref{Type: objCounter, Name: backendName(svc.Name, addr)},
		&expr.Immediate{Register: 1, Data: addr.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: be16(addr.Port())},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: uint32(nfproto(addr.Addr())),
			RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true,
		},
	}
}

// fullNATExprs, in postrouting, source-NAT the flows whose original
// destination was the service (the first packet only: conntrack does the
// rest). In an inet table "ct original daddr" is 16 bytes for both
// families, the IPv4 address followed by zeros, so the rule also checks
// the layer-3 protocol.
func fullNATExprs(svc *Service) []expr.Any {
	vip := svc.VIP.Addr()
	dst := make([]byte, 16)
	copy(dst, vip.AsSlice())
	ex := []expr.Any{
		&expr.Ct{Key: expr.CtKeyL3PROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto(vip)}},
		&expr.Ct{Key: expr.CtKeyDST, Direction: dirOriginal, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst},
		&expr.Ct{Key: expr.CtKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(svc.Proto)}},
		&expr.Ct{Key: expr.CtKeyPROTODST, Direction: dirOriginal, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(svc.VIP.Port())},
	}
	if !svc.SNAT.IsValid() {
		return append(ex, &expr.Masq{})
	}
	return append(ex,
		&expr.Immediate{Register: 1, Data: svc.SNAT.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(nfproto(svc.SNAT)), RegAddrMin: 1, RegAddrMax: 1},
	)
}

// dirOriginal is IP_CT_DIR_ORIGINAL: the conntrack tuple as the client
// sent it.
const dirOriginal = 0
