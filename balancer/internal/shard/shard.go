// Package shard provides the contention-avoiding round-robin position
// shared by lbkit's round-robin and weighted round-robin pickers.
package shard

import (
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Counter is a round-robin position over n entries that avoids the
// single shared atomic counter of gRPC's picker. On this class of machine
// that counter costs ~7 ns alone but ~20–50 ns per pick from two threads:
// every increment moves its cache line between cores, so it loses to a
// mutex under contention.
//
// Counter instead keeps a few shards, each an atomic counter on its own
// cache line starting at a random offset. A pick increments one shard,
// chosen from the address of the calling goroutine's stack: a goroutine
// that picks in a loop (a connection handler, a benchmark worker) keeps
// using one shard, so its cache line stays on its core, and goroutines
// running at the same time on other threads have other stacks and so
// mostly other shards. Every shard walks the entries in order, so over
// any interval each entry's count is within the number of shards of the
// perfect share (each shard is off by less than one).
//
// The shard index XOR-folds the stack address, from bit 11 up (stacks
// are at least 2 KiB and aligned to their power-of-two size), into
// log2(shards) bits. Up to that many goroutines whose stacks were
// allocated one after another with the same size (a worker pool, the
// goroutines of b.RunParallel) thus get distinct shards, where a hash
// would let two of them collide with probability 1/shards.
type Counter struct {
	shards []shard
	fold   uint   // 4 for 16 shards, 64 (no-op) for 256
	n      uint64 // entries
}

// shard is one counter on its own cache line.
type shard struct {
	pos atomic.Uint64
	_   [56]byte
}

// shardCount returns 16 for up to 4 CPUs (GOMAXPROCS) and 256 above.
func shardCount() int {
	if runtime.GOMAXPROCS(0) <= 4 {
		return 16
	}
	return 256
}

// New returns a counter over n > 0 entries with shards starting at
// random offsets, so pickers rebuilt at the same time do not all start on
// the same entry. With a non-nil src the offsets come from src and the
// counter has a single shard, so its sequence is reproducible.
func New(n int, src rand.Source) Counter {
	s := shardCount()
	if src != nil {
		s = 1
	}
	c := Counter{shards: make([]shard, s), fold: 64, n: uint64(n)}
	if s == 16 {
		c.fold = 4
	}
	for i := range c.shards {
		if src != nil {
			c.shards[i].pos.Store(rand.New(src).Uint64N(c.n))
		} else {
			c.shards[i].pos.Store(rand.Uint64N(c.n))
		}
	}
	return c
}

// Next returns the next entry index, in [0, n). It is safe for concurrent
// use and does not allocate.
func (c *Counter) Next() uint64 {
	// The anchor's address identifies the calling goroutine's stack (and
	// call depth). Taking the address of a local does not make it escape.
	var anchor byte
	return c.On(c.ShardOf(uint64(uintptr(unsafe.Pointer(&anchor)))))
}

// ShardOf folds a stack address into a shard index.
func (c *Counter) ShardOf(addr uint64) int {
	x := addr >> 11
	x ^= x >> 32
	x ^= x >> 16
	x ^= x >> 8 // low byte: XOR of all bytes
	x ^= x >> c.fold
	return int(x & uint64(len(c.shards)-1))
}

// On advances shard i (in [0, Shards())) and returns its entry index.
func (c *Counter) On(i int) uint64 {
	return (c.shards[i].pos.Add(1) - 1) % c.n
}

// Shards returns the number of shards.
func (c *Counter) Shards() int { return len(c.shards) }
