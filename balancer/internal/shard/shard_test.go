package shard

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Goroutine stacks allocated one after another, of any power-of-two size
// from 2 KiB, land on distinct shards, as many as there are shards.
func TestShardOfSeparatesConsecutiveStacks(t *testing.T) {
	for _, shards := range []int{16, 256} {
		for size := uint64(2 << 10); size <= 1<<20; size <<= 1 {
			t.Run(fmt.Sprintf("shards=%d/stack=%dKiB", shards, size>>10), func(t *testing.T) {
				c := Counter{shards: make([]shard, shards), fold: 64, n: 1}
				if shards == 16 {
					c.fold = 4
				}
				for _, base := range []uint64{0xc000000000, 0x7f3a12345000 &^ (size*uint64(shards) - 1)} {
					seen := map[int]bool{}
					for k := range uint64(shards) {
						depth := uint64(700) // the same call depth in every stack
						seen[c.ShardOf(base+k*size+size-depth)] = true
					}
					assert.Len(t, seen, shards, "base %#x", base)
				}
			})
		}
	}
}
