package dnslb

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/miekg/dns"
)

const opcodeUpdate = 5

// updateOp is one validated change from an UPDATE message.
type updateOp struct {
	sv     *service
	add    bool
	addr   netip.Addr // invalid with all: every member of fam (or both)
	all    bool
	family int // 0 IPv4, 1 IPv6, 2 both
}

// acceptUpdate answers an RFC 2136 UPDATE signed with one of
// Config.UpdateKeys: A and AAAA records added at a service name add
// backends (at the service's UpdatePort) to its pool, records deleted
// remove them. The update is applied only if every change in it is
// acceptable. Prerequisites are not supported (NOTIMP). It reports false
// if pkt does not parse, for the caller to answer FORMERR.
//
// This path is rare and uses miekg/dns; it allocates.
func (w *worker) acceptUpdate(pkt []byte) ([]byte, bool) {
	var m dns.Msg
	if err := m.Unpack(pkt); err != nil {
		return nil, false
	}
	reply := new(dns.Msg)
	reply.SetReply(&m)
	reply.Authoritative = false
	t := m.IsTsig()
	if t == nil {
		reply.Rcode = dns.RcodeNotAuth // unsigned updates are never accepted
		return w.packReply(reply, nil, "", 0)
	}
	if _, ok := dns.IsDomainName(t.Algorithm); !ok || t.Algorithm == "" || t.Algorithm == "." {
		reply.Rcode = dns.RcodeFormatError // a TSIG record without an algorithm
		return w.packReply(reply, nil, "", 0)
	}
	keyName := dns.CanonicalName(t.Hdr.Name)
	key, ok := w.s.updKeys[keyName]
	var tsigErr uint16
	switch {
	case !ok || dns.CanonicalName(t.Algorithm) != key.Algorithm:
		tsigErr = dns.RcodeBadKey
	default:
		err := dns.TsigVerify(append([]byte(nil), pkt...), key.Secret, "", false)
		switch {
		case errors.Is(err, dns.ErrTime):
			tsigErr = dns.RcodeBadTime
		case err != nil:
			tsigErr = dns.RcodeBadSig
		}
	}
	if tsigErr != 0 {
		reply.Rcode = dns.RcodeNotAuth
		return w.packReply(reply, t, key.Secret, tsigErr)
	}
	reply.Rcode = w.applyUpdate(&m)
	return w.packReply(reply, t, key.Secret, 0)
}

// applyUpdate validates and applies the update section and returns the
// rcode.
func (w *worker) applyUpdate(m *dns.Msg) int {
	if len(m.Question) != 1 || m.Question[0].Qtype != dns.TypeSOA {
		return dns.RcodeFormatError
	}
	zw, err := wireName(m.Question[0].Name)
	if err != nil {
		return dns.RcodeFormatError
	}
	tab := w.s.tab.Load()
	zn := tab.zones[string(zw)]
	if zn == nil {
		return dns.RcodeNotAuth
	}
	if len(m.Answer) > 0 {
		return dns.RcodeNotImplemented // prerequisites
	}
	var ops []updateOp
	for _, rr := range m.Ns {
		h := rr.Header()
		name := dns.CanonicalName(h.Name)
		if !dns.IsSubDomain(zn.origin, name) {
			return dns.RcodeNotZone
		}
		nw, err := wireName(name)
		if err != nil {
			return dns.RcodeFormatError
		}
		ref, ok := tab.names[string(nw)]
		if !ok || ref.zone != zn || ref.node.svc == nil || ref.node.svc.cfg.UpdatePort == 0 {
			return dns.RcodeRefused // only services open to updates change
		}
		op := updateOp{sv: ref.node.svc}
		switch h.Class {
		case dns.ClassINET, dns.ClassNONE:
			op.add = h.Class == dns.ClassINET
			switch v := rr.(type) {
			case *dns.A:
				op.addr, _ = netip.AddrFromSlice(v.A.To4())
			case *dns.AAAA:
				op.addr, _ = netip.AddrFromSlice(v.AAAA.To16())
			default:
				return dns.RcodeRefused
			}
			if !op.addr.IsValid() {
				return dns.RcodeFormatError
			}
		case dns.ClassANY:
			op.all = true
			switch h.Rrtype {
			case dns.TypeA:
				op.family = 0
			case dns.TypeAAAA:
				op.family = 1
			case dns.TypeANY:
				op.family = 2
			default:
				return dns.RcodeRefused
			}
		default:
			return dns.RcodeFormatError
		}
		ops = append(ops, op)
	}
	for _, op := range ops {
		pool := op.sv.cfg.Pool
		switch {
		case op.all:
			for _, ep := range pool.Endpoints() {
				if op.family == 2 || famOf(ep.Addr().Addr()) == op.family {
					pool.Remove(ep.Addr())
				}
			}
		case op.add:
			addr := netip.AddrPortFrom(op.addr, op.sv.cfg.UpdatePort)
			if pool.Endpoint(addr) == nil {
				if err := pool.Add(balancer.Backend{Addr: addr}); err != nil {
					return dns.RcodeServerFailure
				}
			}
		default:
			pool.Remove(netip.AddrPortFrom(op.addr, op.sv.cfg.UpdatePort))
		}
	}
	var pools []string
	for _, op := range ops {
		if n := op.sv.cfg.Pool.Name(); !slices.Contains(pools, n) {
			pools = append(pools, n)
		}
	}
	w.s.log.Info("dnslb: accepted update", "zone", zn.origin, "changes", len(ops), "pool", pools)
	return dns.RcodeSuccess
}

// packReply packs reply into the worker's buffer (after the two bytes
// reserved for TCP), signed with secret when the request was signed. A
// nonzero tsigErr sends a TSIG error record instead, as RFC 8945 §5.3.2
// asks (unsigned for BADKEY and BADSIG).
func (w *worker) packReply(reply *dns.Msg, t *dns.TSIG, secret string, tsigErr uint16) ([]byte, bool) {
	var buf []byte
	var err error
	if t == nil {
		buf, err = reply.Pack()
	} else {
		reply.SetTsig(t.Hdr.Name, t.Algorithm, 300, time.Now().Unix())
		rt := reply.Extra[len(reply.Extra)-1].(*dns.TSIG)
		rt.OrigId = t.OrigId
		rt.Error = tsigErr
		if secret == "" {
			secret = "AA==" // not used: BADKEY/BADSIG replies are unsigned
		}
		buf, _, err = dns.TsigGenerate(reply, secret, t.MAC, false)
		if err == nil {
			// TsigGenerate leaves the TSIG's original ID in the header;
			// the reply carries the request's ID (the MAC covers OrigId).
			buf[0], buf[1] = byte(reply.Id>>8), byte(reply.Id)
		}
	}
	if err != nil {
		return nil, false
	}
	out := append(w.out[:2], buf...)
	w.out = out[:0]
	return out, true
}
