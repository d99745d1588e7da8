package iplb

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// jhash is the kernel's jhash (include/linux/jhash.h, Bob Jenkins'
// lookup3), which nft's "jhash" expression applies to the bytes of its
// source registers. Whole words are read in host byte order, as the
// kernel's __get_unaligned_cpu32 does.
func jhash(key []byte, seed uint32) uint32 {
	length := uint32(len(key))
	a := 0xdeadbeef + length + seed
	b, c := a, a
	for len(key) > 12 {
		a += binary.NativeEndian.Uint32(key)
		b += binary.NativeEndian.Uint32(key[4:])
		c += binary.NativeEndian.Uint32(key[8:])
		a, b, c = jhashMix(a, b, c)
		key = key[12:]
	}
	if len(key) == 0 {
		return c
	}
	var tail [12]byte
	copy(tail[:], key)
	// The tail is added byte by byte, little-endian, on every host.
	a += binary.LittleEndian.Uint32(tail[0:])
	b += binary.LittleEndian.Uint32(tail[4:])
	c += binary.LittleEndian.Uint32(tail[8:])
	return jhashFinal(a, b, c)
}

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// flowSlot returns the slot the kernel rule of a service hashing h (with
// prefix length bits for hashClient) computes for a flow from client:
// jhash over the registers holding "saddr . sport" (the port zero-padded
// to 4 bytes) for hashFlow, or the masked "saddr" for hashClient, scaled
// into [0, size) the way nft_jhash does (reciprocal_scale: the high 32
// bits of h × size, not h mod size).
func flowSlot(client netip.AddrPort, h hashing, bits int, seed uint32, size int) int {
	addr := client.Addr().Unmap()
	if h == hashClient && bits > 0 {
		addr = netip.PrefixFrom(addr, bits).Masked().Addr()
	}
	key := addr.AsSlice()
	if h == hashFlow {
		key = append(key, 0, 0, 0, 0)
		binary.BigEndian.PutUint16(key[len(key)-4:], client.Port())
	}
	x := jhash(key, seed)
	return int(uint64(x) * uint64(size) >> 32)
}
