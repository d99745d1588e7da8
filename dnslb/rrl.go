package dnslb

import (
	"errors"
	"hash/maphash"
	"math"
	"math/bits"
	"net/netip"
	"sync/atomic"
	"time"
)

// RateLimit configures response rate limiting (RRL) per client prefix, as
// BIND and Knot do against reflection attacks: a prefix that asks for more
// than Rate responses per second (after a Burst) gets, of its excess
// responses, every Slip-th sent truncated (TC set, no records, so a real
// client retries over TCP, where no limit applies) and the rest dropped.
// The zero value disables rate limiting.
type RateLimit struct {
	// Rate is the sustained number of UDP responses per second allowed to
	// one client prefix. Zero disables rate limiting.
	Rate float64
	// Burst is how many responses a prefix may get at once before Rate
	// applies. Zero means max(1, Rate).
	Burst int
	// Slip sends every Slip-th limited response truncated instead of
	// dropping it. Zero means 2 (BIND's and Knot's default); a negative
	// value drops every limited response.
	Slip int
	// IPv4PrefixLen and IPv6PrefixLen are the client prefix lengths
	// accounted together. Zero means 24 and 56.
	IPv4PrefixLen, IPv6PrefixLen int
	// TableSize is the number of prefixes tracked, rounded up to a power
	// of two; prefixes that collide share a budget. Slots are chosen by a
	// hash keyed with a secret drawn at random per process, so a client
	// cannot aim its prefixes at another's slot. Zero means 65536 (4 MiB:
	// 64 bytes a slot).
	TableSize int
}

// rrlVerdict is what the limiter says about one response.
type rrlVerdict uint8

const (
	rrlPass rrlVerdict = iota
	rrlSlip
	rrlDrop
)

// limiter is a fixed-size table of GCRA (generic cell rate algorithm)
// buckets indexed by a keyed hash of the client prefix. Each slot holds
// its theoretical arrival time: a response is allowed when, after adding
// one emission interval, the TAT is at most Burst intervals ahead of now.
// Prefixes whose hashes collide share the slot and so one budget: a
// colliding prefix never resets it, so alternating between two prefixes
// of one slot gets no more than one prefix alone. Updates are lock-free
// compare-and-swaps; check does not allocate.
type limiter struct {
	slots        []rrlSlot
	mask         uint64
	seed         maphash.Seed // the per-process secret keying the slot hash
	interval     int64        // ns per response
	tolerance    int64        // burst × interval
	slip         uint32
	bits4, bits6 int
	base         time.Time
}

type rrlSlot struct {
	tat   atomic.Int64
	slips atomic.Uint32
	_     [52]byte // one slot per cache line
}

// rrlSeed keys the slot hash of every limiter in the process. It is
// random per process, so which prefixes share a slot cannot be known (and
// a slot cannot be aimed at) from outside.
var rrlSeed = maphash.MakeSeed()

func newLimiter(c RateLimit) (*limiter, error) {
	if c.Rate == 0 {
		return nil, nil
	}
	switch {
	case !(c.Rate > 0) || math.IsInf(c.Rate, 0):
		return nil, errors.New("dnslb: RateLimit.Rate must be positive and finite")
	case c.Burst < 0 || c.TableSize < 0:
		return nil, errors.New("dnslb: RateLimit.Burst and TableSize must not be negative")
	case c.IPv4PrefixLen < 0 || c.IPv4PrefixLen > 32 || c.IPv6PrefixLen < 0 || c.IPv6PrefixLen > 128:
		return nil, errors.New("dnslb: RateLimit prefix lengths out of range")
	case c.TableSize > 1<<24:
		return nil, errors.New("dnslb: RateLimit.TableSize must be at most 2^24")
	}
	burst := c.Burst
	if burst == 0 {
		burst = max(1, int(c.Rate))
	}
	size := c.TableSize
	if size == 0 {
		size = 1 << 16
	}
	size = 1 << bits.Len(uint(size-1))
	l := &limiter{
		slots:    make([]rrlSlot, size),
		mask:     uint64(size - 1),
		interval: max(1, int64(float64(time.Second)/c.Rate)),
		bits4:    c.IPv4PrefixLen,
		bits6:    c.IPv6PrefixLen,
		base:     time.Now(),
		seed:     rrlSeed,
	}
	l.tolerance = int64(burst) * l.interval
	switch {
	case c.Slip == 0:
		l.slip = 2
	case c.Slip > 0:
		l.slip = uint32(c.Slip)
	}
	if l.bits4 == 0 {
		l.bits4 = 24
	}
	if l.bits6 == 0 {
		l.bits6 = 56
	}
	return l, nil
}

// now returns monotonic nanoseconds since the limiter was made.
func (l *limiter) now() int64 { return int64(time.Since(l.base)) }

// key returns the keyed hash of a's accounting prefix.
func (l *limiter) key(a netip.Addr) uint64 {
	a = a.Unmap()
	n := l.bits6
	if a.Is4() {
		n = l.bits4
	}
	p, _ := a.Prefix(n)
	b := p.Addr().As16() // IPv4 as IPv4-mapped: one form per prefix
	return maphash.Comparable(l.seed, b)
}

// check accounts one response to the prefix hashed as key at time now (ns).
func (l *limiter) check(key uint64, now int64) rrlVerdict {
	s := &l.slots[key&l.mask]
	for {
		tat := s.tat.Load()
		next := max(tat, now) + l.interval
		if next-now > l.tolerance {
			break
		}
		if s.tat.CompareAndSwap(tat, next) {
			return rrlPass
		}
	}
	if l.slip > 0 && s.slips.Add(1)%l.slip == 0 {
		return rrlSlip
	}
	return rrlDrop
}
