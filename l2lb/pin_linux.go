package l2lb

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// metaLayout is the layout of the pinned maps this version writes (the
// key and value types of every map). A process adopts pinned maps only of
// its own layout; maps whose sizes differ from its Config are migrated.
const metaLayout = 1

// bpffsRoot is where the BPF file system is mounted, and defaultPinRoot
// the directory the default pin directories are made in.
const (
	bpffsRoot      = "/sys/fs/bpf"
	defaultPinRoot = bpffsRoot + "/lbkit"
	linkPin        = "link"
)

// pinnedMaps are the maps that are pinned and adopted: all but the
// program's read-only data, which each load makes anew.
var pinnedMaps = []string{
	"vips", "rings", "service_conf", "backends", "backend_addrs", "conns",
	"lb_config", "lb_meta", "service_stats", "backend_stats", "global_stats",
}

// migratedMaps are the maps whose entries a migration copies into the new
// maps: the connection table and the counters. The others are written
// whole by the new process before its program runs.
var migratedMaps = []string{"conns", "service_stats", "backend_stats", "global_stats"}

// netnsInode returns the inode of the calling thread's network namespace
// and whether it is the initial one (that of process 1).
func netnsInode() (ino uint64, initial bool, err error) {
	var st, st1 unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, false, fmt.Errorf("l2lb: network namespace: %w", err)
	}
	if err := unix.Stat("/proc/1/ns/net", &st1); err != nil {
		return st.Ino, false, nil
	}
	return st.Ino, st.Ino == st1.Ino && st.Dev == st1.Dev, nil
}

// defaultPinDir is Config.PinDir's default for interface ifname in the
// namespace with inode ns.
func defaultPinDir(ifname string, ns uint64, initial bool) string {
	if initial {
		return filepath.Join(defaultPinRoot, ifname)
	}
	return filepath.Join(defaultPinRoot, fmt.Sprintf("netns-%d", ns), ifname)
}

// preparePinDir makes dir, mounting the BPF file system on /sys/fs/bpf
// first when dir is under it and nothing is mounted there, and checks
// that dir is on a BPF file system.
func preparePinDir(dir string) error {
	if rel, err := filepath.Rel(bpffsRoot, dir); err == nil && filepath.IsLocal(rel) && !isBPFFS(bpffsRoot) {
		if err := unix.Mount("bpffs", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("l2lb: mount the BPF file system on %s: %w", bpffsRoot, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("l2lb: pin directory: %w", err)
	}
	if !isBPFFS(dir) {
		return fmt.Errorf("l2lb: pin directory %s is not on a BPF file system (mount -t bpf bpffs DIR)", dir)
	}
	return nil
}

// lockPinDir takes an exclusive lock on dir for the life of the returned
// file (a process that dies releases it), so that two control planes
// never drive one pinned data plane.
func lockPinDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("l2lb: pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("l2lb: pin directory %s: another balancer serves it", dir)
		}
		return nil, fmt.Errorf("l2lb: lock pin directory %s: %w", dir, err)
	}
	return f, nil
}

func isBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// adoption is a data plane a previous process pinned: its link, its maps
// and the state read back from them.
type adoption struct {
	link    link.Link
	progTag string
	maps    map[string]*ebpf.Map // the pinned maps, by name
	reuse   map[string]*ebpf.Map // those the new program uses as they are
	migrate bool                 // some maps are replaced by new ones
	mac     [6]byte
	vipsB   bool
	vips    map[VIP]uint32
	members map[uint32]adoptedMember // by backend id
}

type adoptedMember struct {
	addr    netip.AddrPort
	service uint32
	mac     [6]byte
	up      bool
}

// close closes the adoption's handles (not the pins).
func (a *adoption) close() {
	if a == nil {
		return
	}
	if a.link != nil {
		a.link.Close()
	}
	for _, m := range a.maps {
		m.Close()
	}
}

// removePins deletes every pin in dir, and dir itself.
func removePins(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("l2lb: pin directory: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("l2lb: remove pins: %w", err)
	}
	return nil
}

// openPinned opens the data plane pinned in dir for the interface ifindex
// of namespace ns, sized as spec. It returns nil when there is none: no
// link pinned, or one whose interface is gone (its pins are removed
// then). It fails when the pins belong to another interface or namespace,
// or have another layout.
func openPinned(dir string, spec *ebpf.CollectionSpec, ifindex int, ns uint64) (*adoption, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil)
	if errors.Is(err, fs.ErrNotExist) {
		// Nothing adoptable: maps pinned by a process that died before it
		// attached.
		return nil, removePins(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("l2lb: pinned link in %s: %w", dir, err)
	}
	a := &adoption{link: l, maps: make(map[string]*ebpf.Map), reuse: make(map[string]*ebpf.Map)}
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("l2lb: pinned link in %s: %w", dir, err)
	}
	if x := info.XDP(); x == nil || x.Ifindex == 0 {
		// The interface was deleted: the link is defunct.
		a.close()
		ok = true
		return nil, removePins(dir)
	}
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("l2lb: pinned map %s in %s: %w", name, dir, err)
		}
		a.maps[name] = m
	}
	var meta l2lbMeta
	if err := a.maps["lb_meta"].Lookup(uint32(0), &meta); err != nil {
		return nil, fmt.Errorf("l2lb: pinned map lb_meta in %s: %w", dir, err)
	}
	switch {
	case meta.Layout != metaLayout:
		return nil, fmt.Errorf("l2lb: the data plane pinned in %s has map layout %d, this version %d: stop it (Close) or use another PinDir", dir, meta.Layout, metaLayout)
	case meta.Netns != ns || int(meta.Ifindex) != ifindex || int(info.XDP().Ifindex) != ifindex:
		return nil, fmt.Errorf("l2lb: the data plane pinned in %s belongs to interface %d of namespace %d, not %d of %d: use another PinDir", dir, meta.Ifindex, meta.Netns, ifindex, ns)
	}
	for _, name := range pinnedMaps {
		if err := spec.Maps[name].Compatible(a.maps[name]); err != nil {
			a.migrate = true
			continue
		}
		a.reuse[name] = a.maps[name]
	}
	if a.migrate {
		// Every map the program uses comes from one generation: a
		// migration replaces them all.
		clear(a.reuse)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("l2lb: pinned program: %w", err)
	}
	pi, err := prog.Info()
	prog.Close()
	if err != nil {
		return nil, fmt.Errorf("l2lb: pinned program: %w", err)
	}
	a.progTag = pi.Tag
	if err := a.readState(); err != nil {
		return nil, err
	}
	ok = true
	return a, nil
}

// readState reads the balancer's config, VIP table and backends from the
// pinned maps.
func (a *adoption) readState() error {
	var c l2lbConfig
	if err := a.maps["lb_config"].Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("l2lb: pinned config: %w", err)
	}
	a.mac, a.vipsB = c.Mac, c.Flags&2 != 0
	vips := a.maps["vips"]
	half := vips.MaxEntries() / 2
	base := uint32(0)
	if a.vipsB {
		base = half
	}
	a.vips = make(map[VIP]uint32)
	for i := range half {
		var e l2lbVipEntry
		if err := vips.Lookup(base+i, &e); err != nil {
			return fmt.Errorf("l2lb: pinned VIP table: %w", err)
		}
		if e.Key.Family == 0 {
			continue
		}
		addr := netip.AddrFrom16(e.Key.Addr)
		if e.Key.Family == 4 {
			addr = addr.Unmap()
		}
		a.vips[VIP{netip.AddrPortFrom(addr, htons(e.Key.Port)), Protocol(e.Key.Proto)}] = e.Service
	}
	a.members = make(map[uint32]adoptedMember)
	be, addrs := a.maps["backends"], a.maps["backend_addrs"]
	for id := uint32(1); id < be.MaxEntries(); id++ {
		var ba l2lbBackendAddr
		var b l2lbBackend
		if err := addrs.Lookup(id, &ba); err != nil {
			return fmt.Errorf("l2lb: pinned backend address %d: %w", id, err)
		}
		if ba.Family == 0 {
			continue
		}
		if err := be.Lookup(id, &b); err != nil {
			return fmt.Errorf("l2lb: pinned backend %d: %w", id, err)
		}
		addr := netip.AddrFrom16(ba.Addr)
		if ba.Family == 4 {
			addr = addr.Unmap()
		}
		a.members[id] = adoptedMember{addr: netip.AddrPortFrom(addr, ba.Port), service: b.Service, mac: b.Mac, up: b.Flags&1 != 0}
	}
	return nil
}

// migrateMaps copies the connection table and the counters from the
// pinned maps into dp's new ones. Entries already present are kept, so
// a second pass after the program switched adds the flows the old
// program created meanwhile.
func (a *adoption) migrateMaps(dp *dataplane) error {
	for _, name := range migratedMaps {
		var err error
		switch name {
		case "conns":
			err = copyEntries[l2lbConnKey, uint32](a.maps[name], dp.objs.Conns, false)
		case "service_stats":
			err = copyEntries[uint32, []l2lbCounters](a.maps[name], dp.objs.ServiceStats, true)
		case "backend_stats":
			err = copyEntries[uint32, []l2lbCounters](a.maps[name], dp.objs.BackendStats, true)
		case "global_stats":
			err = copyEntries[uint32, []l2lbGlobalCounters](a.maps[name], dp.objs.GlobalStats, true)
		}
		if err != nil {
			return fmt.Errorf("l2lb: migrate map %s: %w", name, err)
		}
	}
	return nil
}

// copyEntries copies the entries of from into to: every key for a hash
// map (keeping entries to already has), the keys both arrays hold for an
// array (overwriting).
func copyEntries[K comparable, V any](from, to *ebpf.Map, array bool) error {
	var k K
	var v V
	flags := ebpf.UpdateNoExist
	if array {
		flags = ebpf.UpdateAny
	}
	it := from.Iterate()
	for it.Next(&k, &v) {
		if array {
			if idx, ok := any(k).(uint32); ok && idx >= to.MaxEntries() {
				continue
			}
		}
		err := to.Update(k, v, flags)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return err
		}
	}
	return it.Err()
}

// pinAll pins dp's maps in dir, replacing pins of the same names.
func (dp *dataplane) pinAll(dir string) error {
	for _, name := range pinnedMaps {
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("l2lb: replace pin %s: %w", path, err)
		}
		if err := dp.mapByName(name).Pin(path); err != nil {
			return fmt.Errorf("l2lb: pin map %s: %w", name, err)
		}
	}
	return nil
}

// mapByName returns dp's map called name in the program.
func (dp *dataplane) mapByName(name string) *ebpf.Map {
	o := &dp.objs
	return map[string]*ebpf.Map{
		"vips": o.Vips, "rings": o.Rings, "service_conf": o.ServiceConf,
		"backends": o.Backends, "backend_addrs": o.BackendAddrs, "conns": o.Conns,
		"lb_config": o.LbConfig, "lb_meta": o.LbMeta, "service_stats": o.ServiceStats,
		"backend_stats": o.BackendStats, "global_stats": o.GlobalStats,
	}[name]
}

// writeMeta records what the maps belong to.
func (dp *dataplane) writeMeta(ifindex int, ns uint64) error {
	m := l2lbMeta{Layout: metaLayout, Ifindex: uint32(ifindex), Netns: ns}
	if err := dp.objs.LbMeta.Update(uint32(0), &m, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("l2lb: write meta: %w", err)
	}
	return nil
}
