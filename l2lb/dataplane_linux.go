package l2lb

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/lbkit/lbkit/balancer"
)

// dataplane is the loaded XDP program and its maps, with typed writers
// for the control plane and typed readers for Stats.
type dataplane struct {
	objs        l2lbObjects
	maxServices int
	maxBackends int
	connTable   int
	ncpu        int
	vipBits     uint // log2 of the slots of each of the vips map's two tables

	mac        [6]byte
	vipsB      bool           // the program reads the second VIP table
	slotWrites uint64         // ring slots written since load: tests check deltas
	services   map[VIP]uint32 // the VIP table the program reads
}

// loadDataplane loads the program with maps sized for maxServices
// services, maxBackends backend ids and a connection table of connTable
// flows. It needs CAP_BPF (root).
func loadDataplane(maxServices, maxBackends, connTable int) (*dataplane, error) {
	spec, err := loadL2lb()
	if err != nil {
		return nil, fmt.Errorf("l2lb: load program spec: %w", err)
	}
	bits := vipTableBits(maxServices)
	spec.Maps["vips"].MaxEntries = 2 << bits
	if err := spec.Variables["vip_bits"].Set(uint32(bits)); err != nil {
		return nil, fmt.Errorf("l2lb: set vip_bits: %w", err)
	}
	spec.Maps["service_stats"].MaxEntries = uint32(maxServices)
	spec.Maps["service_conf"].MaxEntries = uint32(maxServices)
	spec.Maps["rings"].MaxEntries = uint32(maxServices * RingSize)
	spec.Maps["backends"].MaxEntries = uint32(maxBackends)
	spec.Maps["backend_stats"].MaxEntries = uint32(maxBackends)
	spec.Maps["conns"].MaxEntries = uint32(connTable)
	dp := &dataplane{maxServices: maxServices, maxBackends: maxBackends, connTable: connTable, vipBits: bits, services: map[VIP]uint32{}}
	if err := spec.LoadAndAssign(&dp.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("l2lb: load program: %+v", ve)
		}
		return nil, fmt.Errorf("l2lb: load program: %w", err)
	}
	dp.ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		dp.objs.Close()
		return nil, fmt.Errorf("l2lb: %w", err)
	}
	return dp, nil
}

func (dp *dataplane) Close() error { return dp.objs.Close() }

// setConfig writes the balancer's MAC and flags: ready, and which VIP
// table the program reads.
func (dp *dataplane) setConfig(mac [6]byte) error {
	dp.mac = mac
	return dp.writeConfig(dp.vipsB)
}

// writeConfig writes the config entry with the VIP table vipsB. Between
// two writes only the flags' VIP-table bit changes (one byte), so the
// program reads the old entry or the new one, never a mix.
func (dp *dataplane) writeConfig(vipsB bool) error {
	c := l2lbConfig{Mac: dp.mac, Flags: 1} // CONFIG_READY
	if vipsB {
		c.Flags |= 2 // CONFIG_VIPS_B
	}
	if err := dp.objs.LbConfig.Update(uint32(0), &c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("l2lb: write config: %w", err)
	}
	dp.vipsB = vipsB
	return nil
}

func vipKey(v VIP) l2lbVipKey {
	return l2lbVipKey{
		Addr:   v.Addr.Addr().As16(),
		Port:   htons(v.Addr.Port()),
		Proto:  uint8(v.Proto),
		Family: family(v.Addr.Addr()),
	}
}

func htons(p uint16) uint16 { return p<<8 | p>>8 }

// vipProbes bounds the linear probing of the vips map: VIP_PROBES in
// bpf/structs.h.
const vipProbes = 8

// vipTableBits returns log2 of the vips map's size for maxServices: at
// least 8 slots per service (16 at least), so that the runs linear
// probing walks stay short and a service always finds a slot within
// vipProbes of its home.
func vipTableBits(maxServices int) uint {
	bits := uint(4)
	for 1<<bits < 8*maxServices {
		bits++
	}
	return bits
}

// vipHome returns the home slot of k in a vips map of 2^bits slots, as
// vip_home in bpf/l2lb.c: the top bits of ((a0 ^ a1 ^ a2 ^ tail) << 32 |
// a3) * 0x9e3779b97f4a7c15, where a0..a3 are the address's little-endian
// 32-bit words and tail is the key's last (port, protocol, family).
func vipHome(k l2lbVipKey, bits uint) uint32 {
	le := binary.LittleEndian.Uint32
	tail := uint32(k.Port) | uint32(k.Proto)<<16 | uint32(k.Family)<<24
	x := (uint64(le(k.Addr[0:])^le(k.Addr[4:])^le(k.Addr[8:])^tail)<<32 | uint64(le(k.Addr[12:]))) * 0x9e3779b97f4a7c15
	return uint32(x >> (64 - bits))
}

// setService maps v to service id, keeping the other services.
func (dp *dataplane) setService(v VIP, id uint32) error {
	next := maps.Clone(dp.services)
	next[v] = id
	return dp.setServices(next)
}

// setServices makes services the program's VIP table: it lays the table
// out, writes it whole into the half of the vips map the program does not
// read, then flips the config to it. A frame meets the old table or the
// new one. It fails, changing nothing, if a VIP finds no free slot within
// vipProbes of its home.
func (dp *dataplane) setServices(services map[VIP]uint32) error {
	table, err := vipTable(services, dp.vipBits)
	if err != nil {
		return err
	}
	n := uint32(1) << dp.vipBits
	base := uint32(0)
	if !dp.vipsB {
		base = n
	}
	keys := make([]uint32, n)
	for i := range keys {
		keys[i] = base + uint32(i)
	}
	if _, err := dp.objs.Vips.BatchUpdate(keys, table, nil); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("l2lb: write VIP table: %w", err)
		}
		for i := range keys {
			if err := dp.objs.Vips.Update(keys[i], &table[i], ebpf.UpdateAny); err != nil {
				return fmt.Errorf("l2lb: write VIP table slot %d: %w", keys[i], err)
			}
		}
	}
	if err := dp.writeConfig(!dp.vipsB); err != nil {
		return err
	}
	dp.services = maps.Clone(services)
	return nil
}

// vipTable lays out a VIP table of 2^bits slots: each VIP in the first
// free slot of the run from its home slot, placed in order of home slot
// (then key), so the layout depends on the set alone.
func vipTable(services map[VIP]uint32, bits uint) ([]l2lbVipEntry, error) {
	table := make([]l2lbVipEntry, 1<<bits)
	mask := uint32(1)<<bits - 1
	type placed struct {
		v    VIP
		k    l2lbVipKey
		home uint32
	}
	order := make([]placed, 0, len(services))
	for v := range services {
		k := vipKey(v)
		order = append(order, placed{v, k, vipHome(k, bits)})
	}
	slices.SortFunc(order, func(a, b placed) int {
		if c := cmp.Compare(a.home, b.home); c != 0 {
			return c
		}
		if c := a.v.Addr.Compare(b.v.Addr); c != 0 {
			return c
		}
		return cmp.Compare(a.v.Proto, b.v.Proto)
	})
	for _, p := range order {
		ok := false
		for i := range uint32(vipProbes) {
			slot := (p.home + i) & mask
			if table[slot].Key.Family == 0 {
				table[slot] = l2lbVipEntry{Key: p.k, Service: services[p.v]}
				ok = true
				break
			}
		}
		if !ok {
			return nil, fmt.Errorf("l2lb: service %s/%s: no free VIP table slot within %d of its home", p.v.Addr, p.v.Proto, vipProbes)
		}
	}
	return table, nil
}

// setSlots writes ring slots slots[i] of service to backend ids[i], in
// batches where the kernel supports it.
func (dp *dataplane) setSlots(service uint32, slots []int, ids []uint32) error {
	if len(slots) == 0 {
		return nil
	}
	dp.slotWrites += uint64(len(slots))
	keys := make([]uint32, len(slots))
	for i, s := range slots {
		keys[i] = service*RingSize + uint32(s)
	}
	const batch = 8192
	for i := 0; i < len(keys); i += batch {
		j := min(i+batch, len(keys))
		_, err := dp.objs.Rings.BatchUpdate(keys[i:j], ids[i:j], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for k := i; k < j; k++ {
				if err = dp.objs.Rings.Update(keys[k], ids[k], ebpf.UpdateAny); err != nil {
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("l2lb: write ring of service %d: %w", service, err)
		}
	}
	return nil
}

// setKey writes what service id hashes to pick a new flow's slot: the
// client's address under k's prefix, or the 5-tuple.
func (dp *dataplane) setKey(id uint32, k balancer.Key, v4 bool) error {
	var c l2lbService
	if mask, client := clientMask(k, v4); client {
		c.Mask, c.Flags = mask, 1 // SERVICE_HASH_CLIENT
	}
	if err := dp.objs.ServiceConf.Update(id, &c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("l2lb: write service %d: %w", id, err)
	}
	return nil
}

func (dp *dataplane) setBackend(id uint32, e BackendEntry) error {
	v := l2lbBackend{Mac: e.MAC, Service: e.Service}
	if e.Up {
		v.Flags = 1 // BACKEND_UP
	}
	if err := dp.objs.Backends.Update(id, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("l2lb: write backend %d: %w", id, err)
	}
	return nil
}

func (dp *dataplane) counters() (Counters, error) {
	per := make([]l2lbGlobalCounters, dp.ncpu)
	if err := dp.objs.GlobalStats.Lookup(uint32(0), &per); err != nil {
		return Counters{}, fmt.Errorf("l2lb: read counters: %w", err)
	}
	var c Counters
	for _, p := range per {
		c.Passed += p.Passed
		c.Dropped += p.Dropped
		c.NoBackend += p.NoBackend
		c.Forwarded += p.Forwarded
		c.ConnHits += p.ConnHits
		c.ConnMisses += p.ConnMisses
		c.ConnRepicks += p.ConnRepicks
		c.ConnLost += p.ConnLost
	}
	return c, nil
}

func (dp *dataplane) traffic(m *ebpf.Map, id uint32) (Traffic, error) {
	per := make([]l2lbCounters, dp.ncpu)
	if err := m.Lookup(id, &per); err != nil {
		return Traffic{}, fmt.Errorf("l2lb: read counters %d: %w", id, err)
	}
	var t Traffic
	for _, p := range per {
		t.Packets += p.Packets
		t.Bytes += p.Bytes
	}
	return t, nil
}

func (dp *dataplane) serviceTraffic(id uint32) (Traffic, error) {
	return dp.traffic(dp.objs.ServiceStats, id)
}

func (dp *dataplane) backendTraffic(id uint32) (Traffic, error) {
	return dp.traffic(dp.objs.BackendStats, id)
}

// resetTraffic zeroes the counters of a backend or service id about to
// be reused.
func (dp *dataplane) resetTraffic(m *ebpf.Map, id uint32) error {
	zero := make([]l2lbCounters, dp.ncpu)
	if err := m.Update(id, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("l2lb: reset counters %d: %w", id, err)
	}
	return nil
}

// cachedBackend returns the backend id the connection table holds for
// flow f to service id service.
func (dp *dataplane) cachedBackend(f Flow, service uint32) (uint32, bool) {
	k := l2lbConnKey{Src: f.Src.Addr().As16(), Sport: htons(f.Src.Port()), Service: service}
	var id uint32
	if err := dp.objs.Conns.Lookup(&k, &id); err != nil {
		return 0, false
	}
	return id, true
}

// connEntries counts the flows in the connection table.
func (dp *dataplane) connEntries() (int, error) {
	const batch = 4096
	keys := make([]l2lbConnKey, batch)
	vals := make([]uint32, batch)
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := dp.objs.Conns.BatchLookup(&cursor, keys, vals, nil)
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return dp.connEntriesIterate()
		}
		if err != nil {
			return 0, fmt.Errorf("l2lb: read connection table: %w", err)
		}
	}
}

// connEntriesIterate counts the flows one key at a time, for kernels
// without batch lookups.
func (dp *dataplane) connEntriesIterate() (int, error) {
	var k l2lbConnKey
	var v uint32
	n := 0
	it := dp.objs.Conns.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("l2lb: read connection table: %w", err)
	}
	return n, nil
}
