package config

import (
	"cmp"
	"maps"
	"net/netip"
	"reflect"
	"slices"
)

// Changes is what changed from one configuration to the next, for a reload
// that applies only the change: pools and listeners are matched by name.
// Names are listed in the order of the configuration that holds them (the
// new one, or the old one for removals).
type Changes struct {
	// PoolsAdded and PoolsRemoved name pools only in the new or the old
	// configuration.
	PoolsAdded, PoolsRemoved []string
	// PoolsChanged lists pools in both whose declaration differs.
	PoolsChanged []PoolChange

	// ListenersAdded and ListenersRemoved name listeners only in the new
	// or the old configuration.
	ListenersAdded, ListenersRemoved []string
	// ListenersChanged lists listeners in both whose declaration differs.
	// A listener whose pools changed but which is itself unchanged is not
	// listed: it keeps reading the pool by name.
	ListenersChanged []ListenerChange

	// Admin, AccessLog and ShutdownTimeout report changes of those
	// top-level sections (the admin token and bind address included).
	Admin, AccessLog, ShutdownTimeout bool
}

// PoolChange says how a pool present in both configurations changed.
type PoolChange struct {
	// Name is the pool's name.
	Name string
	// Members reports that members were added, removed or changed; the
	// addresses are listed below.
	Members bool
	// MembersAdded, MembersRemoved and MembersChanged list member
	// addresses (as written in the file) that joined, left, or kept their
	// address but changed weight, zone or meta.
	MembersAdded, MembersRemoved, MembersChanged []string
	// Health reports a changed health template or passive settings:
	// following the pool again (health.Checker.Follow) applies it and
	// keeps the members' health state.
	Health bool
	// Settings reports that the policy or its options, slow start, panic
	// threshold, zone preference or EWMA decay changed:
	// balancer.Pool.Reconfigure applies them and keeps the members' state.
	Settings bool
	// Key reports a new key. Front-ends hold the key, so the listeners
	// that read the pool (see [Listener.PoolNames]) take the new one.
	Key bool
}

// MembersOnly reports whether only the members changed, so the running
// pool is updated with balancer.Pool.Set alone, keeping every remaining
// member's endpoint state: health, in-flight counts, EWMA.
func (c PoolChange) MembersOnly() bool { return c.Members && !c.Health && !c.Settings && !c.Key }

func (c PoolChange) changed() bool { return c.Members || c.Health || c.Settings || c.Key }

// ListenerChange says how a listener present in both configurations
// changed.
type ListenerChange struct {
	// Name is the listener's name.
	Name string
	// TypeChanged reports a new type: the listener is replaced.
	TypeChanged bool
	// AddrChanged reports a new listening address (for iplb and l2lb: a
	// new VIP, port, protocol or interface): the socket or the kernel
	// state is replaced. False means the listener can keep its socket and
	// apply the new options in place.
	AddrChanged bool
}

// Empty reports whether nothing changed.
func (d Changes) Empty() bool {
	return len(d.PoolsAdded) == 0 && len(d.PoolsRemoved) == 0 && len(d.PoolsChanged) == 0 &&
		len(d.ListenersAdded) == 0 && len(d.ListenersRemoved) == 0 && len(d.ListenersChanged) == 0 &&
		!d.Admin && !d.AccessLog && !d.ShutdownTimeout
}

// Diff returns what changed from old to new. A nil old means everything
// in new is added; a nil new means everything in old is removed. Lists and
// maps that are empty and absent compare equal, as do a weight of 0 and 1.
func Diff(old, new *Config) Changes {
	if old == nil {
		old = &Config{}
	}
	if new == nil {
		new = &Config{}
	}
	var d Changes
	d.Admin = old.Admin != new.Admin
	d.AccessLog = old.AccessLog != new.AccessLog
	d.ShutdownTimeout = old.ShutdownTimeout != new.ShutdownTimeout

	for i := range new.Pools {
		np := &new.Pools[i]
		op := old.Pool(np.Name)
		if op == nil {
			d.PoolsAdded = append(d.PoolsAdded, np.Name)
			continue
		}
		if ch := comparePools(op, np); ch.changed() {
			d.PoolsChanged = append(d.PoolsChanged, ch)
		}
	}
	for i := range old.Pools {
		if new.Pool(old.Pools[i].Name) == nil {
			d.PoolsRemoved = append(d.PoolsRemoved, old.Pools[i].Name)
		}
	}

	for i := range new.Listeners {
		nl := &new.Listeners[i]
		ol := old.Listener(nl.Name)
		switch {
		case ol == nil:
			d.ListenersAdded = append(d.ListenersAdded, nl.Name)
		case !same(ol, nl):
			d.ListenersChanged = append(d.ListenersChanged, ListenerChange{
				Name:        nl.Name,
				TypeChanged: ol.Type != nl.Type,
				AddrChanged: ol.Type != nl.Type || !slices.Equal(bindings(ol), bindings(nl)),
			})
		}
	}
	for i := range old.Listeners {
		if new.Listener(old.Listeners[i].Name) == nil {
			d.ListenersRemoved = append(d.ListenersRemoved, old.Listeners[i].Name)
		}
	}
	return d
}

func comparePools(op, np *Pool) PoolChange {
	ch := PoolChange{Name: np.Name}
	oldMembers := map[string]*Member{}
	for i := range op.Members {
		oldMembers[canonicalAddr(op.Members[i].Addr)] = &op.Members[i]
	}
	newAddrs := map[string]bool{}
	for i := range np.Members {
		nm := &np.Members[i]
		k := canonicalAddr(nm.Addr)
		newAddrs[k] = true
		om, ok := oldMembers[k]
		switch {
		case !ok:
			ch.MembersAdded = append(ch.MembersAdded, nm.Addr)
		case weight(om.Weight) != weight(nm.Weight) || om.Zone != nm.Zone || !maps.Equal(om.Meta, nm.Meta):
			ch.MembersChanged = append(ch.MembersChanged, nm.Addr)
		}
	}
	for i := range op.Members {
		if !newAddrs[canonicalAddr(op.Members[i].Addr)] {
			ch.MembersRemoved = append(ch.MembersRemoved, op.Members[i].Addr)
		}
	}
	ch.Members = len(ch.MembersAdded)+len(ch.MembersRemoved)+len(ch.MembersChanged) > 0
	ch.Health = !same(op.Health, np.Health) || !same(op.Passive, np.Passive)
	ch.Key = op.Key != np.Key
	o, n := *op, *np
	o.Members, o.Health, o.Passive, o.Key = nil, Health{}, Passive{}, np.Key
	n.Members, n.Health, n.Passive = nil, Health{}, Passive{}
	ch.Settings = !same(o, n)
	return ch
}

func weight(w int64) int64 {
	if w == 0 {
		return 1
	}
	return w
}

// binding is an address a listener holds.
type binding struct {
	addr, iface string
	proto       Proto
}

// bindings returns what a listener binds, in a canonical order.
func bindings(l *Listener) []binding {
	var out []binding
	switch {
	case l.IPLB != nil:
		out = append(out, binding{addr: vipString(l.IPLB.VIP, l.IPLB.Port), proto: orProto(l.IPLB.Proto), iface: l.IPLB.Interface})
	case l.L2LB != nil:
		for _, v := range l.L2LB.VIPs {
			out = append(out, binding{addr: vipString(v.VIP, v.Port), proto: orProto(v.Proto), iface: l.L2LB.Interface})
		}
		slices.SortFunc(out, func(a, b binding) int {
			return cmp.Or(cmp.Compare(a.addr, b.addr), cmp.Compare(a.proto, b.proto))
		})
	default:
		out = append(out, binding{addr: l.Addr})
	}
	return out
}

func vipString(vip string, port int) string {
	if a, err := netip.ParseAddr(vip); err == nil && port >= 0 && port <= 65535 {
		return netip.AddrPortFrom(a.Unmap(), uint16(port)).String()
	}
	return vip
}

// same is reflect.DeepEqual but for treating a nil slice or map like an
// empty one (a file that writes "routes: []" means what one that leaves
// routes out does).
func same(a, b any) bool {
	return sameValue(reflect.ValueOf(a), reflect.ValueOf(b))
}

func sameValue(a, b reflect.Value) bool {
	if a.Kind() != b.Kind() || a.Type() != b.Type() {
		return false
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameValue(a.Elem(), b.Elem())
	case reflect.Struct:
		for i := range a.NumField() {
			if !a.Type().Field(i).IsExported() {
				continue
			}
			if !sameValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			bv := b.MapIndex(k)
			if !bv.IsValid() || !sameValue(a.MapIndex(k), bv) {
				return false
			}
		}
		return true
	default:
		return a.Equal(b)
	}
}
