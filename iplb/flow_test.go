package iplb

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestJhashVectors(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("iplb: the lookup3 vectors are hashlittle's; this host is big-endian")
	}
	// Bob Jenkins' lookup3.c driver5 vectors for hashlittle, which the
	// kernel's jhash equals on little-endian hosts.
	for _, tc := range []struct {
		key  string
		seed uint32
		want uint32
	}{
		{"", 0, 0xdeadbeef},
		{"", 0xdeadbeef, 0xbd5b7dde},
		{"Four score and seven years ago", 0, 0x17770551},
		{"Four score and seven years ago", 1, 0xcd628161},
	} {
		assert.Equal(t, tc.want, jhash([]byte(tc.key), tc.seed), "%q seed %#x", tc.key, tc.seed)
	}
}

func TestFlowSlotInRange(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{7, 251, 1021, 65521} {
		seen := make(map[int]bool)
		for range 5000 {
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], r.Uint32())
			s := flowSlot(netip.AddrPortFrom(netip.AddrFrom4(a), uint16(r.Uint32())), hashFlow, 0, 0x1234, size)
			assert.GreaterOrEqual(t, s, 0)
			assert.Less(t, s, size)
			seen[s] = true
		}
		assert.Greater(t, len(seen), min(size, 5000)/2, "size %d: slots spread", size)
	}
}
