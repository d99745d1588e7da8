package config

import (
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// discovery checks a pool's discovery sources. A file source's path is
// resolved against the configuration file's directory in place, so the
// daemon and a reload's diff see the file that is read.
func (d *decoder) discovery(ds *Discovery, p *Pool) {
	if s := ds.DNS; s != nil {
		d.dnsDiscovery(s)
	}
	if f := ds.File; f != nil {
		if f.Path == "" {
			d.errAt(at2(&f.Path, f), "file discovery needs a path")
		} else {
			f.Path = d.path(f.Path)
			dir := filepath.Dir(f.Path)
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				d.errAt(at2(&f.Path, f), "path: directory %s does not exist", dir)
			}
		}
	}
	if e := ds.Etcd; e != nil {
		if len(e.Endpoints) == 0 {
			d.errAt(at2(&e.Endpoints, e), "etcd discovery needs endpoints, such as [http://127.0.0.1:2379]")
		}
		d.etcdEndpoints(e.Endpoints, e, "endpoints")
		switch {
		case e.Prefix == "":
			d.errAt(at2(&e.Prefix, e), "etcd discovery needs a prefix, such as /lbkit/pools/%s/", p.Name)
		case !strings.HasSuffix(e.Prefix, "/"):
			d.errAt(at2(&e.Prefix, e), "prefix: %q must end in '/', or it also matches the keys of %q…", e.Prefix, e.Prefix+"-other/")
		}
	}
}

func (d *decoder) dnsDiscovery(s *DNSDiscovery) {
	if s.Name == "" {
		d.errAt(at2(&s.Name, s), "dns discovery needs a name")
	} else if !validDNSName(s.Name) {
		d.errAt(at2(&s.Name, s), "name: %q is not a DNS name", s.Name)
	}
	switch strings.ToUpper(s.Type) {
	case "SRV":
		s.Type = "SRV"
		if s.Port != 0 {
			d.errAt(at2(&s.Port, s), "port: SRV records carry their ports; remove port, or use type A or AAAA")
		}
	case "", "A", "AAAA":
		s.Type = strings.ToUpper(s.Type)
		if s.Port == 0 {
			d.errAt(at2(&s.Port, s), "dns discovery of %s records needs a port", orName(s.Type, "A/AAAA"))
		} else if s.Port < 1 || s.Port > 65535 {
			d.errAt(at2(&s.Port, s), "port: %d: expected 1 to 65535", s.Port)
		}
	default:
		d.errAt(at2(&s.Type, s), "type: %q: expected SRV, A or AAAA", s.Type)
	}
	for i := range s.Servers {
		srv := &s.Servers[i]
		if _, err := netip.ParseAddr(*srv); err == nil {
			continue
		}
		if ap, err := netip.ParseAddrPort(*srv); err != nil || ap.Port() == 0 {
			d.errAt(at2(srv, s), "servers: %q: expected IP or IP:port, such as 127.0.0.53 or [::1]:5353", *srv)
		}
	}
	if s.MinTTL != 0 && s.MaxTTL != 0 && s.MinTTL > s.MaxTTL {
		d.errAt(at2(&s.MinTTL, s), "min_ttl %s exceeds max_ttl %s", s.MinTTL, s.MaxTTL)
	}
}

// validDNSName reports whether s is a name DNS can carry: labels of 1-63
// bytes with no spaces, 253 bytes at most.
func validDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 || strings.ContainsAny(s, " \t") {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
	}
	return true
}

// etcdEndpoints checks etcd client URLs: http or https with a host and
// port.
func (d *decoder) etcdEndpoints(eps []string, parent any, name string) {
	for i := range eps {
		ep := &eps[i]
		u, err := url.Parse(*ep)
		if err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Path == "" {
			if _, port, err := net.SplitHostPort(u.Host); err == nil && port != "" {
				continue
			}
		}
		d.errAt(at2(ep, parent), "%s: %q: expected a URL such as http://127.0.0.1:2379", name, *ep)
	}
}
