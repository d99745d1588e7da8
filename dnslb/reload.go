package dnslb

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// tables are the zones and services a server answers from: compiled
// once, never modified, and swapped whole by [Server.Update], so a query
// reads one configuration from start to end.
type tables struct {
	zones    map[string]*zone   // lower-case wire apex → zone
	names    map[string]nameRef // lower-case wire name → its zone and node
	services []*service
}

// nameRef locates a name that exists in one of the server's zones.
type nameRef struct {
	zone *zone
	zoff int // offset of the zone's apex in the name
	node *node
}

// findZone returns the zone with the longest apex that name (lower-case
// wire form) is in, and the offset of that apex in name.
func (t *tables) findZone(name []byte) (*zone, int) {
	for off := 0; off < len(name); off += int(name[off]) + 1 {
		if zn := t.zones[string(name[off:])]; zn != nil {
			return zn, off
		}
	}
	return nil, 0
}

// compileTables validates zones and services and compiles them.
func compileTables(zones []Zone, services []Service) (*tables, error) {
	if len(zones) == 0 {
		return nil, errors.New("dnslb: at least one zone is required")
	}
	t := &tables{zones: make(map[string]*zone), names: make(map[string]nameRef)}
	for _, z := range zones {
		zn, err := compileZone(z)
		if err != nil {
			return nil, err
		}
		if t.zones[string(zn.apex)] != nil {
			return nil, fmt.Errorf("dnslb: zone %q configured twice", zn.origin)
		}
		t.zones[string(zn.apex)] = zn
	}
	for _, sc := range services {
		sv, err := compileService(sc)
		if err != nil {
			return nil, err
		}
		zn, _ := t.findZone(sv.name)
		if zn == nil {
			return nil, fmt.Errorf("dnslb: service %q (pool %q) is in none of the zones", sc.Name, sc.Pool.Name())
		}
		nd, err := zn.ensure(presentation(sv.name))
		if err != nil {
			return nil, err
		}
		if nd.svc != nil {
			return nil, fmt.Errorf("dnslb: service %q configured twice", sc.Name)
		}
		if sv.name[0] == 1 && sv.name[1] == '*' {
			return nil, fmt.Errorf("dnslb: service %q: a wildcard cannot be a service", sc.Name)
		}
		if zn.delegated(sv.name, false) != nil {
			return nil, fmt.Errorf("dnslb: service %q is at or under a delegation", sc.Name)
		}
		for _, typ := range []uint16{typeA, typeAAAA, typeSRV, typeCNAME} {
			if nd.rrsets[typ] != nil {
				return nil, fmt.Errorf("dnslb: service %q also has %s records in the zone", sc.Name, dns.TypeToString[typ])
			}
		}
		nd.svc = sv
		t.services = append(t.services, sv)
	}
	// One map lookup finds an existing name's zone and node.
	for _, zn := range t.zones {
		for name, nd := range zn.nodes {
			if owner, off := t.findZone([]byte(name)); owner == zn {
				t.names[name] = nameRef{zone: zn, zoff: off, node: nd}
			}
		}
	}
	return t, nil
}

// Update replaces the zones and services the server answers from, while
// it serves: it validates them as New does and, if they are valid, swaps
// them in at once. Every query is answered from the old configuration or
// from the new one, never from a mix; TCP connections, UDP sockets, the
// rate limiter's state and the pools are kept (the server never closes a
// pool). An invalid configuration returns an error and changes nothing.
// Update blocks while it compiles the configuration and packs each
// service's answers; calls are serialized.
func (s *Server) Update(zones []Zone, services []Service) error {
	s.updMu.Lock()
	defer s.updMu.Unlock()
	t, err := compileTables(zones, services)
	if err != nil {
		return err
	}
	// Pack the answers now, so the first queries after the swap do not
	// wait for it.
	for _, sv := range t.services {
		sv.state()
	}
	var changed []*zone
	if s.xfr != nil {
		changed = s.xfr.refresh(t)
	}
	s.tab.Store(t)
	if s.xfr != nil {
		s.mu.Lock()
		if s.xstop != nil {
			close(s.xstop)
			s.xstop = make(chan struct{})
			s.xfr.watch(t, s.xstop, &s.xwg)
			s.notifyZones(s.xctx, changed)
		}
		s.mu.Unlock()
	}
	s.log.Info("dnslb: configuration updated", "zones", len(zones), "services", len(services))
	return nil
}
