package dnslb

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// DefaultNotifyDelay is how long the server gathers changes of services'
// ready sets before it raises a zone's serial and sends NOTIFY, when
// Config.NotifyDelay is zero: short next to a health interval, long
// enough that a pool flapping faster than this costs one NOTIFY per
// delay instead of one per flap.
const DefaultNotifyDelay = 200 * time.Millisecond

// DefaultIXFRHistory is how many versions of each zone the server keeps
// differences for when Config.IXFRHistory is zero. An IXFR from an older
// serial gets the whole zone (RFC 1995 §4).
const DefaultIXFRHistory = 64

// maxXFRMessage bounds the records packed into one transfer message, with
// room for TSIG, below the 65535 bytes a TCP message can have.
const maxXFRMessage = 60000

// xfr is a server's zone-transfer state: for every zone (by canonical
// origin, so a zone keeps its serial across Update) the current version
// of its transferable content and the differences that led to it.
type xfr struct {
	peers   []netip.Prefix
	keys    map[string]TSIGKey // canonical name → key; empty: unsigned transfers allowed
	first   TSIGKey            // signs NOTIFY when keys is not empty
	notify  []netip.AddrPort
	delay   time.Duration
	history int
	now     func() time.Time

	kick chan struct{} // a service's snapshot changed

	mu    sync.Mutex // guards zones and refreshes
	zones map[string]*zoneHist
}

// zoneHist is one zone's transfer history. serial is what the serving
// path patches into SOA records; cur and diffs are guarded by xfr.mu and
// replaced, never modified.
type zoneHist struct {
	serial atomic.Uint32
	cur    *zoneVersion
	diffs  []zoneDiff // oldest first; each one's to is the next one's from
}

// zoneVersion is one version of a zone's content: the SOA (with this
// version's serial) and every other record, static and of services.
type zoneVersion struct {
	soa  *dns.SOA
	rrs  []dns.RR
	keys map[string]struct{} // presentation form of each of rrs
}

// zoneDiff is what changed from one version to the next (RFC 1995 §4).
type zoneDiff struct {
	from, to *dns.SOA
	del, add []dns.RR
}

// newXFR returns the transfer state cfg asks for, or nil when the server
// neither allows transfers nor notifies anyone.
func newXFR(cfg *Config) (*xfr, error) {
	if len(cfg.TransferPeers) == 0 && len(cfg.Notify) == 0 {
		if len(cfg.TransferKeys) > 0 {
			return nil, errors.New("dnslb: TransferKeys need TransferPeers")
		}
		return nil, nil
	}
	x := &xfr{notify: cfg.Notify, delay: cfg.NotifyDelay, history: cfg.IXFRHistory, now: time.Now,
		kick: make(chan struct{}, 1), zones: make(map[string]*zoneHist)}
	for _, p := range cfg.TransferPeers {
		if !p.IsValid() {
			return nil, errors.New("dnslb: invalid prefix in TransferPeers")
		}
		x.peers = append(x.peers, p.Masked())
	}
	for _, a := range cfg.Notify {
		if !a.IsValid() || a.Port() == 0 {
			return nil, errors.New("dnslb: Notify needs addresses with ports")
		}
	}
	if x.delay == 0 {
		x.delay = DefaultNotifyDelay
	}
	if x.history == 0 {
		x.history = DefaultIXFRHistory
	}
	if x.delay < 0 || x.history < 0 {
		return nil, errors.New("dnslb: NotifyDelay and IXFRHistory must not be negative")
	}
	keys, err := canonicalKeys(cfg.TransferKeys, "TransferKeys")
	if err != nil {
		return nil, err
	}
	x.keys = keys
	if len(cfg.TransferKeys) > 0 {
		x.first = keys[dns.CanonicalName(cfg.TransferKeys[0].Name)]
	}
	return x, nil
}

// canonicalKeys validates keys and maps their canonical names to them,
// with canonical algorithm names (hmac-sha256 when empty).
func canonicalKeys(keys []TSIGKey, field string) (map[string]TSIGKey, error) {
	var out map[string]TSIGKey
	for _, k := range keys {
		if k.Name == "" || k.Secret == "" {
			return nil, errors.New("dnslb: " + field + " need a name and a secret")
		}
		k.Name = dns.CanonicalName(k.Name)
		if k.Algorithm == "" {
			k.Algorithm = dns.HmacSHA256
		}
		k.Algorithm = dns.CanonicalName(k.Algorithm)
		if out == nil {
			out = make(map[string]TSIGKey)
		}
		out[k.Name] = k
	}
	return out, nil
}

// allowed reports whether src may transfer zones.
func (x *xfr) allowed(src netip.Addr) bool {
	src = src.Unmap()
	for _, p := range x.peers {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// nextSerial returns the serial after prev: the current Unix time, so a
// restarted server does not go back, or prev+1 when that is not later in
// serial arithmetic (RFC 1982), as with several changes in one second.
func (x *xfr) nextSerial(prev uint32) uint32 {
	n := uint32(x.now().Unix())
	if int32(n-prev) <= 0 {
		n = prev + 1
	}
	return n
}

// refresh computes the content of every zone in t, records what changed
// since the last version, raises the serials of the zones that changed,
// and links t's zones to their serials. It returns the zones whose
// content changed (new zones included).
func (x *xfr) refresh(t *tables) []*zone {
	x.mu.Lock()
	defer x.mu.Unlock()
	var changed []*zone
	for _, zn := range t.zones {
		h := x.zones[zn.origin]
		if h == nil {
			h = new(zoneHist)
			x.zones[zn.origin] = h
		}
		if zn.ser == nil { // tables not yet serving; served ones are linked
			zn.ser = &h.serial
		}
		v := &zoneVersion{rrs: t.content(zn), keys: make(map[string]struct{})}
		for _, rr := range v.rrs {
			v.keys[rr.String()] = struct{}{}
		}
		v.soa = dns.Copy(zn.soa).(*dns.SOA)
		if h.cur == nil {
			v.soa.Serial = max(zn.soa.Serial, uint32(x.now().Unix()))
			h.cur = v
			h.serial.Store(v.soa.Serial)
			changed = append(changed, zn)
			continue
		}
		d := zoneDiff{from: h.cur.soa, to: v.soa}
		for _, rr := range h.cur.rrs {
			if _, ok := v.keys[rr.String()]; !ok {
				d.del = append(d.del, rr)
			}
		}
		for _, rr := range v.rrs {
			if _, ok := h.cur.keys[rr.String()]; !ok {
				d.add = append(d.add, rr)
			}
		}
		soaSame := dns.IsDuplicate(withSerial(zn.soa, 0), withSerial(h.cur.soa, 0))
		if len(d.del) == 0 && len(d.add) == 0 && soaSame {
			continue
		}
		v.soa.Serial = x.nextSerial(h.cur.soa.Serial)
		// Appending writes past what an IXFR in progress reads; the
		// oldest are dropped by copying, never by shifting in place.
		h.diffs = append(h.diffs, d)
		if len(h.diffs) > x.history {
			h.diffs = slices.Clone(h.diffs[len(h.diffs)-x.history:])
		}
		h.cur = v
		h.serial.Store(v.soa.Serial)
		changed = append(changed, zn)
	}
	return changed
}

func withSerial(soa *dns.SOA, serial uint32) *dns.SOA {
	c := dns.Copy(soa).(*dns.SOA)
	c.Serial = serial
	return c
}

// content returns zn's records but the SOA: the zone data and, for each
// service in zn, the A and AAAA records its answers draw from (the ready
// backends, or the fallback members when none is ready).
func (t *tables) content(zn *zone) []dns.RR {
	rrs := slices.Clone(zn.rrs)
	for _, sv := range t.services {
		if z, _ := t.findZone(sv.name); z != zn {
			continue
		}
		st := sv.state()
		name := presentation(sv.name)
		for f := range st.fam {
			fs := &st.fam[f]
			for i := range fs.n {
				a := fs.wire[i*fs.stride+12 : (i+1)*fs.stride]
				h := dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: sv.ttl}
				if f == 0 {
					rrs = append(rrs, &dns.A{Hdr: h, A: net.IP(slices.Clone(a))})
				} else {
					h.Rrtype = dns.TypeAAAA
					rrs = append(rrs, &dns.AAAA{Hdr: h, AAAA: net.IP(slices.Clone(a))})
				}
			}
		}
	}
	return rrs
}

// transfer returns the records an AXFR (serial < 0) or an IXFR from
// serial of the zone at origin answers, in order, or nil when the server
// has no such zone. An IXFR from the current serial or later is answered
// with the current SOA alone; one from a serial older than the history
// with the whole zone (RFC 1995 §4).
func (x *xfr) transfer(origin string, serial int64) []dns.RR {
	x.mu.Lock()
	h := x.zones[origin]
	var (
		cur   *zoneVersion
		diffs []zoneDiff
	)
	if h != nil {
		cur, diffs = h.cur, h.diffs
	}
	x.mu.Unlock()
	if cur == nil {
		return nil
	}
	if serial >= 0 {
		s := uint32(serial)
		if int32(cur.soa.Serial-s) <= 0 {
			return []dns.RR{cur.soa}
		}
		for i, d := range diffs {
			if d.from.Serial != s {
				continue
			}
			out := []dns.RR{cur.soa}
			for _, d := range diffs[i:] {
				out = append(out, d.from)
				out = append(out, d.del...)
				out = append(out, d.to)
				out = append(out, d.add...)
			}
			return append(out, cur.soa)
		}
	}
	out := make([]dns.RR, 0, len(cur.rrs)+2)
	out = append(out, cur.soa)
	out = append(out, cur.rrs...)
	return append(out, cur.soa)
}

// isXFR reports whether pkt is a standard query for AXFR or IXFR. It
// reads only the header and the question.
func isXFR(pkt []byte) bool {
	if len(pkt) < headerLen || binary.BigEndian.Uint16(pkt[4:]) != 1 || pkt[2]&0xF8 != 0 {
		return false // a response, another opcode or not one question
	}
	off := headerLen
	for off < len(pkt) && pkt[off] != 0 {
		if pkt[off]&0xC0 != 0 {
			return false
		}
		off += 1 + int(pkt[off])
	}
	if off+3 > len(pkt) {
		return false
	}
	t := binary.BigEndian.Uint16(pkt[off+1:])
	return t == typeAXFR || t == typeIXFR
}

// xfrRequest is a checked transfer request.
type xfrRequest struct {
	m      *dns.Msg
	origin string
	serial int64 // IXFR: the client's serial; AXFR: -1
}

// checkTSIG checks the TSIG record of the signed message pkt (m, parsed)
// against keys. It returns a signer for the replies, or a NOTAUTH reply
// carrying the TSIG error (RFC 8945 §5.2), or neither when m is not
// signed.
func (x *xfr) checkTSIG(m *dns.Msg, pkt []byte) (*signer, *dns.Msg) {
	t := m.IsTsig()
	if t == nil {
		return nil, nil
	}
	key, ok := x.keys[dns.CanonicalName(t.Hdr.Name)]
	var tsigErr uint16
	switch {
	case !ok || dns.CanonicalName(t.Algorithm) != key.Algorithm:
		tsigErr = dns.RcodeBadKey
	default:
		err := dns.TsigVerify(slices.Clone(pkt), key.Secret, "", false)
		switch {
		case errors.Is(err, dns.ErrTime):
			tsigErr = dns.RcodeBadTime
		case err != nil:
			tsigErr = dns.RcodeBadSig
		}
	}
	if tsigErr != 0 {
		reply := new(dns.Msg)
		reply.SetReply(m)
		reply.Rcode = dns.RcodeNotAuth
		reply.SetTsig(t.Hdr.Name, t.Algorithm, 300, x.now().Unix())
		rt := reply.Extra[len(reply.Extra)-1].(*dns.TSIG)
		rt.Error, rt.OrigId = tsigErr, t.OrigId
		return nil, reply
	}
	return &signer{req: t, key: key, now: x.now}, nil
}

// checkXFR parses and checks a transfer request from src. It returns the
// request and the signer of its replies, or a reply to send instead
// (signed by the signer, if any), or nothing when pkt gets no reply.
func (s *Server) checkXFR(pkt []byte, src netip.AddrPort) (*xfrRequest, *dns.Msg, *signer) {
	m := new(dns.Msg)
	if err := m.Unpack(pkt); err != nil || len(m.Question) != 1 {
		return nil, nil, nil
	}
	x := s.xfr
	reply := new(dns.Msg)
	reply.SetReply(m)
	if !x.allowed(src.Addr()) {
		reply.Rcode = dns.RcodeRefused
		return nil, reply, nil
	}
	var sg *signer
	if len(x.keys) > 0 {
		var bad *dns.Msg
		if sg, bad = x.checkTSIG(m, pkt); bad != nil {
			return nil, bad, nil
		}
		if sg == nil {
			reply.Rcode = dns.RcodeRefused // the peers must sign
			return nil, reply, nil
		}
	}
	q := m.Question[0]
	req := &xfrRequest{m: m, origin: dns.CanonicalName(q.Name), serial: -1}
	if q.Qtype == dns.TypeIXFR {
		soa, ok := firstSOA(m.Ns)
		if !ok {
			reply.Rcode = dns.RcodeFormatError
			return nil, reply, sg
		}
		req.serial = int64(soa.Serial)
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		reply.Rcode = dns.RcodeRefused
		return nil, reply, sg
	}
	return req, nil, sg
}

func firstSOA(rrs []dns.RR) (*dns.SOA, bool) {
	for _, rr := range rrs {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa, true
		}
	}
	return nil, false
}

// signer signs the messages of one reply stream: the first with the
// request's MAC, each later one with the MAC before it and timers only
// (RFC 8945 §5.3.1). A nil signer packs unsigned.
type signer struct {
	req   *dns.TSIG
	key   TSIGKey
	mac   string
	later bool
	now   func() time.Time
}

// pack packs m, signed when there is a signer.
func (sg *signer) pack(m *dns.Msg) ([]byte, error) {
	if sg == nil {
		return m.Pack()
	}
	if !sg.later {
		sg.mac = sg.req.MAC
	}
	m.SetTsig(sg.req.Hdr.Name, sg.req.Algorithm, 300, sg.now().Unix())
	m.Extra[len(m.Extra)-1].(*dns.TSIG).OrigId = sg.req.OrigId
	buf, mac, err := dns.TsigGenerate(m, sg.key.Secret, sg.mac, sg.later)
	if err != nil {
		return nil, err
	}
	// TsigGenerate leaves the original ID in the header; the reply
	// carries the request's.
	buf[0], buf[1] = byte(m.Id>>8), byte(m.Id)
	sg.mac, sg.later = mac, true
	return buf, nil
}

// writeTCP writes buf with its length prefix.
func (s *Server) writeTCP(c net.Conn, buf []byte) error {
	if err := c.SetWriteDeadline(time.Now().Add(s.idle)); err != nil {
		return err
	}
	_, err := c.Write(append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(buf)), uint16(len(buf))), buf...))
	return err
}

// serveXFR answers a transfer request on a TCP connection, in as many
// messages as the zone needs. It returns an error when writing fails.
func (s *Server) serveXFR(c net.Conn, pkt []byte, src netip.AddrPort) error {
	req, reply, sg := s.checkXFR(pkt, src)
	if req == nil {
		if reply == nil {
			return nil
		}
		buf, err := sg.pack(reply)
		if err != nil {
			return err
		}
		return s.writeTCP(c, buf)
	}
	rrs := s.xfr.transfer(req.origin, req.serial)
	next := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(req.m)
		m.Authoritative = true
		return m
	}
	reply = next()
	if rrs == nil {
		reply.Rcode = dns.RcodeNotAuth // not a zone of this server
	}
	size := 0
	for _, rr := range rrs {
		l := dns.Len(rr)
		if size+l > maxXFRMessage && len(reply.Answer) > 0 {
			buf, err := sg.pack(reply)
			if err != nil {
				return err
			}
			if err := s.writeTCP(c, buf); err != nil {
				return err
			}
			reply, size = next(), 0
		}
		reply.Answer = append(reply.Answer, rr)
		size += l
	}
	s.log.Debug("dnslb: zone transfer", "zone", req.origin, "client", src, "serial", req.serial, "records", len(rrs))
	buf, err := sg.pack(reply)
	if err != nil {
		return err
	}
	return s.writeTCP(c, buf)
}

// xfrUDP answers a transfer request over UDP: an IXFR gets the current
// SOA alone, which tells a secondary that is up to date so and any other
// to retry over TCP (RFC 1995 §2); AXFR is not served over UDP.
func (w *worker) xfrUDP(pkt []byte, src netip.AddrPort) []byte {
	s := w.s
	req, reply, sg := s.checkXFR(pkt, src)
	if req != nil {
		reply = new(dns.Msg)
		reply.SetReply(req.m)
		reply.Authoritative = true
		soa := s.xfr.current(req.origin)
		switch {
		case req.serial < 0:
			reply.Rcode = dns.RcodeRefused
		case soa == nil:
			reply.Rcode = dns.RcodeNotAuth
		default:
			reply.Answer = []dns.RR{soa}
		}
	}
	if reply == nil {
		return nil
	}
	buf, err := sg.pack(reply)
	if err != nil || len(buf) > 512 {
		return nil
	}
	out := append(w.out[:2], buf...)
	w.out = out[:0]
	return out
}

// current returns the current SOA of the zone at origin, or nil.
func (x *xfr) current(origin string) *dns.SOA {
	x.mu.Lock()
	defer x.mu.Unlock()
	if h := x.zones[origin]; h != nil && h.cur != nil {
		return h.cur.soa
	}
	return nil
}

// signReply signs out, the response to the TSIG-signed query pkt, with
// the transfer key that signed it (secondaries sign their SOA queries).
// A query signed with an unknown key or a bad MAC gets NOTAUTH with the
// TSIG error instead, as RFC 8945 §5.2 says.
func (w *worker) signReply(pkt, out []byte) []byte {
	var req, m dns.Msg
	if req.Unpack(pkt) != nil || m.Unpack(out[2:]) != nil {
		return out
	}
	sg, bad := w.s.xfr.checkTSIG(&req, pkt)
	var buf []byte
	var err error
	switch {
	case bad != nil:
		buf, err = bad.Pack()
	case sg != nil:
		buf, err = sg.pack(&m)
	default:
		return out
	}
	if err != nil {
		return nil
	}
	res := append(w.out[:2], buf...)
	w.out = res[:0]
	return res
}

// watch forwards every snapshot change of t's services to x.kick until
// stop is closed.
func (x *xfr) watch(t *tables, stop <-chan struct{}, wg *sync.WaitGroup) {
	for _, sv := range t.services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-sv.cfg.Pool.Snapshot().Changed():
					select {
					case x.kick <- struct{}{}:
					default:
					}
				case <-stop:
					return
				}
			}
		}()
	}
}

// runXFR keeps the zones' transfer versions current while the server
// runs: a change of a service's snapshot, gathered for NotifyDelay, is
// turned into new versions, and the secondaries are notified of the
// zones that changed.
func (s *Server) runXFR(ctx context.Context) {
	x := s.xfr
	for {
		select {
		case <-x.kick:
		case <-ctx.Done():
			return
		}
		timer := time.NewTimer(x.delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return
		}
		select {
		case <-x.kick: // changes during the delay are in this round
		default:
		}
		// Under Update's lock, so an Update does not swap the tables
		// between this load and the refresh (which would record the
		// old tables' content as newer).
		s.updMu.Lock()
		changed := x.refresh(s.tab.Load())
		s.updMu.Unlock()
		s.notifyZones(ctx, changed)
	}
}

// notifyZones sends NOTIFY (RFC 1996) for each zone to every configured
// secondary, each from its own goroutine: up to three tries, a second
// apart, until the secondary answers. A secondary that was down misses
// nothing: it asks for the SOA at its refresh interval.
func (s *Server) notifyZones(ctx context.Context, zones []*zone) {
	x := s.xfr
	for _, zn := range zones {
		serial := zn.ser.Load()
		for _, dst := range x.notify {
			s.xwg.Add(1)
			go func() {
				defer s.xwg.Done()
				s.sendNotify(ctx, zn, serial, dst)
			}()
		}
	}
}

func (s *Server) sendNotify(ctx context.Context, zn *zone, serial uint32, dst netip.AddrPort) {
	x := s.xfr
	m := new(dns.Msg)
	m.SetNotify(zn.origin)
	m.Answer = []dns.RR{withSerial(zn.soa, serial)}
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	if x.first.Name != "" {
		c.TsigSecret = map[string]string{x.first.Name: x.first.Secret}
	}
	for try := range 3 {
		if x.first.Name != "" {
			m.SetTsig(x.first.Name, x.first.Algorithm, 300, x.now().Unix())
		}
		r, _, err := c.ExchangeContext(ctx, m, dst.String())
		if err == nil && r.Rcode == dns.RcodeSuccess {
			s.log.Debug("dnslb: notified", "zone", zn.origin, "serial", serial, "secondary", dst)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New(dns.RcodeToString[r.Rcode])
		}
		s.log.Warn("dnslb: NOTIFY", "zone", zn.origin, "secondary", dst, "try", try+1, "err", err)
		m.Extra = nil
		m.Id = dns.Id()
		if try < 2 {
			timer := time.NewTimer(time.Second)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
	}
}
