package dnslb

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/miekg/dns"
)

// DefaultMaxUDPSize is the largest UDP response the server sends when
// Config.MaxUDPSize is zero: 1232 bytes, the DNS Flag Day 2020 value that
// avoids IP fragmentation.
const DefaultMaxUDPSize = 1232

// Config configures a [Server]. Zones is required; every other field has
// a useful zero value, documented on the field.
type Config struct {
	// Zones are the zones the server is authoritative for. Names outside
	// them are REFUSED. At least one is required.
	Zones []Zone
	// Services are the load-balanced names. Each must be inside a zone and
	// must not also have A, AAAA, SRV or CNAME records in the zone data.
	Services []Service
	// UDPSockets is how many UDP sockets ListenAndServe binds with
	// SO_REUSEPORT, each with its own read loop, so the kernel spreads
	// queries over cores. Zero means GOMAXPROCS.
	UDPSockets int
	// MaxUDPSize caps UDP responses (EDNS0 clients may ask for more; a
	// client without EDNS0 always gets at most 512 bytes). Zero means
	// DefaultMaxUDPSize. Range 512–65535.
	MaxUDPSize int
	// RateLimit limits UDP responses per client prefix. The zero value
	// disables it.
	RateLimit RateLimit
	// TCPIdleTimeout closes a TCP connection that sends no query for that
	// long. Zero means 10 seconds.
	TCPIdleTimeout time.Duration
	// MaxTCPConns bounds concurrent TCP connections; more are closed at
	// once. Zero means 1024.
	MaxTCPConns int
	// UpdateKeys are the TSIG keys (RFC 8945) whose holders may add and
	// remove the backends of services that set UpdatePort, with RFC 2136
	// UPDATE messages: an A or AAAA record added at the service name adds
	// that address at UpdatePort to its pool, one deleted removes it.
	// Unsigned or badly signed updates get NOTAUTH. Empty means UPDATE is
	// answered NOTIMP.
	UpdateKeys []TSIGKey
	// TransferPeers are the networks whose hosts may transfer the zones
	// with AXFR and IXFR (RFC 5936, RFC 1995), so standard authoritative
	// servers can serve dnslb's answers as secondaries. A transfer holds
	// the zone data and, at each service's name, the A and AAAA records
	// of its current answers (its ready backends). Empty refuses
	// transfers. With TransferPeers or Notify set, each zone's SOA serial
	// follows its content: it rises on every change (to the Unix time, or
	// by one when that is not later), so it never goes back across a
	// restart or an Update; a zone file serial above the current Unix
	// time is kept as the start.
	TransferPeers []netip.Prefix
	// TransferKeys, when not empty, are the TSIG keys a transfer request
	// must be signed with (unsigned ones are REFUSED); queries signed
	// with one of them, such as a secondary's SOA query, get signed
	// answers. NOTIFY messages are signed with the first.
	TransferKeys []TSIGKey
	// Notify are the secondaries sent a NOTIFY (RFC 1996) for a zone
	// when the server starts and whenever its content changes: a
	// service's answers changed or Update changed the zone.
	Notify []netip.AddrPort
	// NotifyDelay gathers changes for that long before a new serial and
	// NOTIFY, so a flapping pool does not flood the secondaries. Zero
	// means DefaultNotifyDelay.
	NotifyDelay time.Duration
	// IXFRHistory is how many changes per zone are kept for IXFR; an
	// IXFR from an older serial gets the whole zone. Zero means
	// DefaultIXFRHistory.
	IXFRHistory int
	// Logger receives serving errors. Nil means slog.Default().
	Logger *slog.Logger
}

// Server is an authoritative DNS server for a set of zones whose service
// names answer from balancer pools. It answers standard queries over UDP
// and TCP with a purpose-built wire-format path that does not allocate:
// service answers are packed ahead of time from each pool snapshot and
// rebuilt when the pool publishes a new one.
//
// A Server serves once: call ListenAndServe or Serve one time, and stop
// it with Shutdown (gracefully), Close (now) or by cancelling Serve's
// context (the same as Close). Zones and services change while it serves
// with [Server.Update]. All methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	tab     atomic.Pointer[tables] // zones and services; swapped by Update
	rrl     *limiter
	maxUDP  int
	idle    time.Duration
	tcpSem  chan struct{}
	updKeys map[string]TSIGKey // canonical key name → key with canonical algorithm
	xfr     *xfr               // nil without transfers and NOTIFY
	xwg     sync.WaitGroup     // NOTIFY senders and snapshot watchers
	xctx    context.Context    // ends when the server stops; set by Serve
	xstop   chan struct{}      // stops the watchers of the current tables

	updMu sync.Mutex // serializes Update

	workers sync.Pool // *worker for TCP connections and ServeDNS

	mu      sync.Mutex
	started bool
	closed  bool
	done    chan struct{} // closed when Shutdown, Close or Serve's ctx stops the server
	udp     []net.PacketConn
	lns     []net.Listener
	conns   map[*tcpConn]struct{}
	stats   []*worker // UDP loops, for Stats
	wg      sync.WaitGroup
	tcpStat workerStats
}

// tcpConn is a TCP connection being served. busy is set, under mu, while
// a query is read and answered, so Shutdown wakes only connections
// waiting for their next query and lets the others finish theirs.
type tcpConn struct {
	net.Conn
	mu   sync.Mutex
	busy bool
}

// ErrServerClosed is returned by Serve and ListenAndServe when the server
// was already started, shut down or closed.
var ErrServerClosed = errors.New("dnslb: server closed or already started")

// New validates cfg and returns a server ready to serve.
func New(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), conns: make(map[*tcpConn]struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	tab, err := compileTables(cfg.Zones, cfg.Services)
	if err != nil {
		return nil, err
	}
	if s.xfr, err = newXFR(&cfg); err != nil {
		return nil, err
	}
	if s.xfr != nil {
		s.xfr.refresh(tab)
	}
	s.tab.Store(tab)
	if s.updKeys, err = canonicalKeys(cfg.UpdateKeys, "UpdateKeys"); err != nil {
		return nil, err
	}
	if s.rrl, err = newLimiter(cfg.RateLimit); err != nil {
		return nil, err
	}
	s.maxUDP = cfg.MaxUDPSize
	if s.maxUDP == 0 {
		s.maxUDP = DefaultMaxUDPSize
	}
	if s.maxUDP < 512 || s.maxUDP > 65535 {
		return nil, errors.New("dnslb: MaxUDPSize must be in [512, 65535]")
	}
	s.idle = cfg.TCPIdleTimeout
	if s.idle == 0 {
		s.idle = 10 * time.Second
	}
	maxConns := cfg.MaxTCPConns
	if maxConns == 0 {
		maxConns = 1024
	}
	if s.idle < 0 || maxConns < 0 || cfg.UDPSockets < 0 {
		return nil, errors.New("dnslb: TCPIdleTimeout, MaxTCPConns and UDPSockets must not be negative")
	}
	s.tcpSem = make(chan struct{}, maxConns)
	s.workers.New = func() any { return s.newWorker() }
	return s, nil
}

// Stats are counters of a server's work since it started.
type Stats struct {
	// Queries counts messages received (UDP and TCP).
	Queries uint64
	// Responses counts responses sent.
	Responses uint64
	// Truncated counts UDP responses sent with TC set because the answer
	// did not fit (rate-limit slips are counted in RateLimited only).
	Truncated uint64
	// RateLimited counts responses the rate limiter dropped or slipped.
	RateLimited uint64
	// Slipped counts rate-limited responses sent truncated.
	Slipped uint64
	// Dropped counts messages not answered for another reason: too short
	// for a header, or a response rather than a query.
	Dropped uint64
}

type workerStats struct {
	queries, responses, truncated, limited, slipped, dropped atomic.Uint64
}

func (ws *workerStats) add(st *Stats) {
	st.Queries += ws.queries.Load()
	st.Responses += ws.responses.Load()
	st.Truncated += ws.truncated.Load()
	st.RateLimited += ws.limited.Load()
	st.Slipped += ws.slipped.Load()
	st.Dropped += ws.dropped.Load()
}

// Stats returns the server's counters. It does not block on serving.
func (s *Server) Stats() Stats {
	var st Stats
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.stats {
		w.stats.add(&st)
	}
	s.tcpStat.add(&st)
	return st
}

// ListenAndServe listens on addr (such as "127.0.0.1:5353"; empty means
// ":53") with Config.UDPSockets UDP sockets and one TCP listener (see
// [Listen]) and serves until ctx ends, Shutdown or Close, as [Server.Serve]
// does. It returns an error if listening fails.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	if addr == "" {
		addr = ":53"
	}
	n := s.cfg.UDPSockets
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	udp, tcp, err := Listen(ctx, addr, n)
	if err != nil {
		return err
	}
	return s.Serve(ctx, udp, []net.Listener{tcp})
}

// Serve answers queries arriving on the given UDP sockets (one read loop
// each) and TCP listeners; DNS needs both, and either may be empty. It
// serves until ctx ends (which means the same as Close), Shutdown or
// Close, waits for the read loops and connections to finish, closes the
// sockets and returns nil. The server takes ownership of the sockets. It
// returns ErrServerClosed, closing the sockets, if the server was already
// started, shut down or closed.
func (s *Server) Serve(ctx context.Context, udp []net.PacketConn, tcp []net.Listener) error {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		for _, pc := range udp {
			pc.Close()
		}
		for _, ln := range tcp {
			ln.Close()
		}
		return ErrServerClosed
	}
	s.started = true
	s.udp, s.lns = udp, tcp
	for _, pc := range udp {
		w := s.newWorker()
		w.stats = new(workerStats)
		s.stats = append(s.stats, w)
		s.wg.Add(1)
		go s.serveUDP(pc, w)
	}
	for _, ln := range tcp {
		s.wg.Add(1)
		go s.serveTCP(ln)
	}
	xctx, xcancel := context.WithCancel(context.Background())
	if s.xfr != nil {
		s.xctx = xctx
		s.xstop = make(chan struct{})
		tab := s.tab.Load()
		s.xfr.watch(tab, s.xstop, &s.xwg)
		s.xwg.Add(1)
		go func() {
			defer s.xwg.Done()
			s.runXFR(xctx)
		}()
		zones := make([]*zone, 0, len(tab.zones))
		for _, zn := range tab.zones {
			zones = append(zones, zn)
		}
		s.notifyZones(xctx, zones)
	}
	s.mu.Unlock()
	select {
	case <-ctx.Done():
		s.Close()
	case <-s.done:
	}
	xcancel()
	s.mu.Lock()
	if s.xstop != nil {
		close(s.xstop)
		s.xstop = nil
	}
	s.mu.Unlock()
	s.xwg.Wait()
	s.wg.Wait()
	s.closeSockets()
	return nil
}

// Shutdown stops the server gracefully: it stops reading queries (UDP
// read loops answer what they have read, TCP listeners close), lets each
// TCP connection answer the query it is reading or answering, closes the
// connections waiting for their next one, and waits until every loop and
// connection has finished. When ctx ends first it closes what is left,
// as Close does, and returns ctx.Err(). It is safe to call at any time,
// more than once; before Serve it makes Serve fail with ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopLocked()
	// Wake the read loops: each sees the server stopping and returns.
	now := time.Now()
	for _, pc := range s.udp {
		pc.SetReadDeadline(now)
	}
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.mu.Lock()
		if !c.busy {
			c.SetReadDeadline(now)
		}
		c.mu.Unlock()
	}
	s.mu.Unlock()
	waited := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
		s.closeSockets()
		return nil
	case <-ctx.Done():
		s.Close()
		<-waited
		return ctx.Err()
	}
}

// Close stops the server now: it closes the sockets and every TCP
// connection, answered or not. Serve returns once its loops have ended.
// It is safe to call at any time, more than once, and always returns nil.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopLocked()
	s.mu.Unlock()
	s.closeSockets()
	return nil
}

// stopLocked marks the server stopped. s.mu must be held.
func (s *Server) stopLocked() {
	if !s.closed {
		s.closed = true
		close(s.done)
	}
}

// closeSockets closes the sockets, listeners and connections.
func (s *Server) closeSockets() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pc := range s.udp {
		pc.Close()
	}
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
}

func (s *Server) serveUDP(pc net.PacketConn, w *worker) {
	defer s.wg.Done()
	uc, _ := pc.(*net.UDPConn)
	if uc != nil && s.serveUDPBatch(uc, w) {
		return
	}
	buf := make([]byte, 65535)
	for {
		var (
			n    int
			src  netip.AddrPort
			addr net.Addr
			err  error
		)
		if uc != nil {
			n, src, err = uc.ReadFromUDPAddrPort(buf)
		} else {
			n, addr, err = pc.ReadFrom(buf)
			if ua, ok := addr.(*net.UDPAddr); ok {
				src = ua.AddrPort()
			}
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return
			}
			s.log.Warn("dnslb: UDP read", "err", err)
			continue
		}
		resp := w.respond(buf[:n], src, false)
		if resp == nil {
			continue
		}
		if uc != nil {
			_, err = uc.WriteToUDPAddrPort(resp[2:], src)
		} else {
			_, err = pc.WriteTo(resp[2:], addr)
		}
		if err != nil && !s.isClosed() {
			s.log.Debug("dnslb: UDP write", "client", src, "err", err)
		}
	}
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *Server) serveTCP(ln net.Listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return
			}
			// Out of file descriptors and the like: back off as
			// net/http does instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("dnslb: TCP accept", "err", err, "retry", backoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return
			}
			continue
		}
		backoff = 0
		select {
		case s.tcpSem <- struct{}{}:
		default:
			c.Close() // over MaxTCPConns
			continue
		}
		tc := &tcpConn{Conn: c}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			<-s.tcpSem
			return
		}
		s.conns[tc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handleTCP(tc)
	}
}

func (s *Server) handleTCP(c *tcpConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		<-s.tcpSem
		s.wg.Done()
	}()
	var src netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort()
	}
	w := s.workers.Get().(*worker)
	defer s.workers.Put(w)
	buf := make([]byte, 65535)
	for {
		// Waiting for a query: Shutdown may wake the read (busy is
		// false) and this loop then ends.
		if !c.setBusy(false, s) {
			return
		}
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			return
		}
		// A query is arriving: Shutdown lets it finish.
		if !c.setBusy(true, s) {
			return
		}
		n := int(buf[0])<<8 | int(buf[1])
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return
		}
		if s.xfr != nil && isXFR(buf[:n]) {
			w.stats.queries.Add(1)
			if s.serveXFR(c, buf[:n], src) != nil {
				return
			}
			w.stats.responses.Add(1)
			continue
		}
		resp := w.respond(buf[:n], src, true)
		if resp == nil {
			continue
		}
		l := len(resp) - 2
		resp[0], resp[1] = byte(l>>8), byte(l)
		if err := c.SetWriteDeadline(time.Now().Add(s.idle)); err != nil {
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// setBusy records whether the connection is busy with a query and sets
// its idle read deadline. Entering the idle state it reports false when
// the server is stopping, so the connection ends.
func (c *tcpConn) setBusy(busy bool, s *Server) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !busy && s.isClosed() {
		return false
	}
	c.busy = busy
	return c.SetReadDeadline(time.Now().Add(s.idle)) == nil
}

// ServeDNS answers r as the server would over the writer's transport, so
// the server can also run as a dns.Handler inside a miekg/dns server (at
// the cost of that server's per-query allocations). It implements
// dns.Handler.
func (s *Server) ServeDNS(rw dns.ResponseWriter, r *dns.Msg) {
	pkt, err := r.Pack()
	if err != nil {
		return
	}
	var src netip.AddrPort
	tcp := false
	switch a := rw.RemoteAddr().(type) {
	case *net.UDPAddr:
		src = a.AddrPort()
	case *net.TCPAddr:
		src, tcp = a.AddrPort(), true
	}
	w := s.workers.Get().(*worker)
	defer s.workers.Put(w)
	if resp := w.respond(pkt, src, tcp); resp != nil {
		rw.Write(resp[2:])
	}
}

// worker holds one serving loop's scratch state, so answering does not
// allocate and loops share no mutable state but the rate limiter.
type worker struct {
	s      *Server
	q      query
	lname  [maxNameLen + 1]byte
	out    []byte
	rot    uint32
	picked []int32      // record indices of the answer being built
	stats  *workerStats // own for UDP loops, the server's shared TCP one otherwise
	signed bool         // the answer being built is signed
	now    int64        // Unix time of a signed answer
	key    []byte       // signature cache key scratch
}

func (s *Server) newWorker() *worker {
	return &worker{s: s, out: make([]byte, 0, 2+65535+512), picked: make([]int32, 0, 16), key: make([]byte, 0, 1024),
		stats: &s.tcpStat, rot: rand.Uint32()}
}

// respond builds the response to pkt from src into the worker's buffer
// and returns it with two bytes reserved in front for the TCP length
// prefix, or nil when pkt gets no response. The result is valid until the
// next call.
func (w *worker) respond(pkt []byte, src netip.AddrPort, tcp bool) []byte {
	w.stats.queries.Add(1)
	q := &w.q
	if !q.parseHeader(pkt) || q.flags&flagQR != 0 {
		w.stats.dropped.Add(1)
		return nil
	}
	if q.opcode == opcodeUpdate && w.s.updKeys != nil {
		if out, ok := w.acceptUpdate(pkt); ok {
			if !tcp && len(out)-2 > 512 {
				// Only absurd names make a reply this long: send the
				// header alone with TC set, so the client uses TCP.
				out = out[:2+headerLen]
				out[4] |= flagTC >> 8
				setCounts(out[2:], 0, 0, 0, 0)
				w.stats.truncated.Add(1)
			}
			w.stats.responses.Add(1)
			return out
		}
	}
	if w.s.xfr != nil && isXFR(pkt) {
		out := w.xfrUDP(pkt, src)
		if out != nil {
			w.stats.responses.Add(1)
		}
		return out
	}
	err := q.parseQuery(pkt)
	limit := 512
	if tcp {
		limit = 65535
	} else if q.edns {
		limit = min(max(int(q.udpSize), 512), w.s.maxUDP)
	}
	r := resp{b: appendHeader(w.out[:2], q, 0), limit: limit, q: q, udpSize: uint16(w.s.maxUDP)}
	switch {
	case q.opcode != opcodeQuery:
		r.rcode = rcodeNotImp
	case err != nil:
		r.rcode = rcodeFormErr
	case q.edns && q.version != 0:
		r.rcode = rcodeBadVers
	case q.qclass != classIN && q.qclass != classANY:
		r.rcode = rcodeRefused // class ANY is answered as IN, as Knot does
	}
	if q.question != nil {
		r.b = append(r.b, q.question...)
		r.qd = 1
	}
	r.qEnd = len(r.b)
	verdict := rrlPass
	if !tcp && w.s.rrl != nil {
		verdict = w.s.rrl.check(w.s.rrl.key(src.Addr()), w.s.rrl.now())
	}
	switch verdict {
	case rrlDrop:
		w.stats.limited.Add(1)
		return nil
	case rrlSlip:
		// A slip is the question (and OPT) with TC set and no records,
		// so a real client retries over TCP, where no limit applies.
		w.stats.limited.Add(1)
		w.stats.slipped.Add(1)
		r.rcode = rcodeSuccess
		r.tc = true
	default:
		if r.rcode == 0 {
			w.answer(&r, src.Addr())
		}
	}
	out := r.finish()
	if q.tsig && w.s.xfr != nil && len(w.s.xfr.keys) > 0 {
		out = w.signReply(pkt, out)
		if out == nil {
			return nil
		}
	}
	if r.tc && verdict == rrlPass {
		w.stats.truncated.Add(1)
	}
	w.stats.responses.Add(1)
	w.out = out[:0]
	return out
}

// resp is a response under construction. b starts with the two reserved
// bytes, then the header.
type resp struct {
	b          []byte
	q          *query
	limit      int
	udpSize    uint16 // the UDP payload size the OPT advertises
	qEnd       int
	rcode      int
	qd, an, ns int
	ar         int
	scope      uint8
	tc         bool
	noAA       bool // a referral: not an authoritative answer
}

// finish sets the rcode and counts, appends the OPT record when the query
// had one, and truncates to header, question and OPT with TC set when the
// message exceeds the limit or tc is already set.
func (r *resp) finish() []byte {
	optLen := 0
	if r.q.edns {
		optLen = 11
		if r.q.ecs {
			optLen += 8 + int(r.q.ecsBytes)
		}
	}
	if r.tc || len(r.b)-2+optLen > r.limit {
		r.b = r.b[:r.qEnd]
		r.an, r.ns, r.ar = 0, 0, 0
		r.tc = true
	}
	h := r.b[2:]
	h[3] = h[3]&^0xF | byte(r.rcode&0xF)
	switch r.rcode {
	case rcodeRefused, rcodeFormErr, rcodeNotImp, rcodeBadVers:
		h[2] &^= flagAA >> 8 // not an authoritative answer
	}
	if r.noAA {
		h[2] &^= flagAA >> 8
	}
	if r.tc {
		h[2] |= flagTC >> 8
	}
	ar := r.ar
	if r.q.edns {
		r.b = appendOPT(r.b, r.q, r.udpSize, r.rcode, r.scope)
		ar++
	}
	setCounts(r.b[2:], r.qd, r.an, r.ns, ar)
	return r.b
}

// maxCNAMEChain bounds how many CNAMEs one answer follows inside a zone.
// A loop (a CNAME b, b CNAME a) ends where it comes back to a name already
// in the answer, as in Knot; a longer chain ends after this many, and the
// resolver takes over.
const maxCNAMEChain = 8

// answer resolves the (well-formed, class IN or ANY, EDNS version 0)
// query. A CNAME whose target is in the same zone is followed, as RFC
// 1034 §4.3.2 step 3a says: the answer holds the chain and then what the
// target has of the asked type (or, when it has none, the SOA in the
// authority section and the rcode of the last name, RFC 6604).
func (w *worker) answer(r *resp, src netip.Addr) {
	q := r.q
	switch q.qtype {
	case typeAXFR, typeIXFR:
		r.rcode = rcodeRefused // no zone transfers
		return
	case typeMAILA, typeMAILB, 0:
		r.rcode = rcodeNotImp
		return
	case typeOPT, typeTSIG:
		r.rcode = rcodeFormErr
		return
	}
	tab := w.s.tab.Load() // one configuration for the whole answer
	lname := lowerName(&w.lname, q.qname)
	ref, ok := tab.names[string(lname)]
	zn, zoff, nd := ref.zone, ref.zoff, ref.node
	if !ok {
		zn, zoff = tab.findZone(lname)
	}
	if zn == nil {
		r.rcode = rcodeRefused
		return
	}
	// Signed answers for clients that ask (RFC 3225: DO set).
	w.signed = q.do && zn.sg != nil
	if w.signed {
		w.now = time.Now().Unix()
	}
	// owner is the message offset of the name the next records belong
	// to: the question name, then each CNAME's target in its rdata.
	owner := headerLen
	var chain [maxCNAMEChain + 1]*node // the CNAME nodes already answered
	for hops := 0; ; hops++ {
		apex := owner + zoff // message offset of the zone's apex inside owner
		if zn.cuts {
			if cut := zn.delegated(lname, q.qtype == typeDS); cut != nil {
				w.referral(r, zn, owner, lname, cut)
				return
			}
		}
		wild := false // nd is the wildcard that synthesizes lname
		if nd == nil {
			if zoff > 0 && w.hostAnswer(r, zn, apex, owner, lname) {
				return
			}
			if zn.wild {
				nd = zn.wildcard(lname, &w.key)
				wild = nd != nil
			}
		}
		if nd == nil {
			if !w.signed {
				r.rcode = rcodeNXDomain
				r.authority(zn, apex)
				return
			}
			// Compact denial: the name exists with no types but NXNAME,
			// so one NSEC signed now (or cached for a name asked before)
			// proves it without revealing or ordering the zone's names.
			e := zn.nxSigs.get(lname, w.now, func() (*sigEntry, error) {
				return zn.sg.nsecEntry(lname, zn.negTTL, []uint16{dns.TypeNXNAME})
			})
			w.deny(r, zn, apex, owner, e)
			return
		}
		if nd.svc != nil {
			w.serviceNode(r, zn, apex, owner, nd.svc, src, lname)
			return
		}
		if q.qtype == typeANY {
			if len(nd.rrsets) == 0 {
				w.nodata(r, zn, apex, owner, lname, nd, wild)
				return
			}
			w.hinfo(r, zn, zn.negTTL, owner, lname)
			return
		}
		if set := nd.rrsets[q.qtype]; set != nil {
			start := len(r.b)
			r.appendRRs(set.wire, owner)
			r.an += set.n
			serial := uint32(0)
			if q.qtype == typeSOA {
				serial = r.patchSerial(zn)
			}
			if w.signed {
				r.an += w.sigStatic(r, zn, set, serial, owner, lname, start, wild)
			}
			return
		}
		cname := nd.rrsets[typeCNAME]
		if cname == nil {
			w.nodata(r, zn, apex, owner, lname, nd, wild)
			return
		}
		start := len(r.b)
		r.appendRRs(cname.wire, owner)
		r.an++
		chain[hops] = nd
		if w.signed {
			r.an += w.sigStatic(r, zn, cname, 0, owner, lname, start, wild)
		}
		// The target name is the CNAME's rdata: uncompressed, after
		// the 2-byte owner pointer and 10 bytes of type, class, TTL
		// and length; its offset in the message leaves out the two
		// bytes reserved in front of r.b.
		target := r.b[start+12 : start+12+int(binary.BigEndian.Uint16(r.b[start+10:]))]
		owner = start + 12 - 2
		lname = lowerName(&w.lname, target)
		if hops == maxCNAMEChain || owner > 0x3FFF {
			return
		}
		ref, ok = tab.names[string(lname)]
		if ok {
			nd, zoff = ref.node, ref.zoff
			if ref.zone != zn || slices.Contains(chain[:hops+1], nd) {
				return // another zone (the resolver follows), or a loop
			}
			continue
		}
		z2, off := tab.findZone(lname)
		if z2 != zn {
			return
		}
		nd, zoff = nil, off
	}
}

// sigStatic appends the RRSIGs of the static RRset set just appended at
// r.b[start:] for the name at owner (lname) and returns how many: those
// made once for the set, or, for an answer a wildcard synthesized, ones
// made for lname (cached per name), so no wildcard proof is needed.
func (w *worker) sigStatic(r *resp, zn *zone, set *rrset, serial uint32, owner int, lname []byte, start int, wild bool) int {
	if !wild {
		return w.appendSig(r, &set.sig, serial, zn, set.rrs, owner)
	}
	end := len(r.b)
	n := w.signAnswer(r, &zn.wSigs, zn, lname, start)
	r.patchOwners(end, owner)
	return n
}

// referral answers a query at or under the delegation cut: the NS
// records in the authority section with AA clear (unless a CNAME before
// it was answered), and, signed, the DS records and their RRSIGs or the
// NSEC that proves there are none (an unsigned delegation); then the
// glue. owner is the message offset of lname.
func (w *worker) referral(r *resp, zn *zone, owner int, lname []byte, cut *node) {
	at := owner + len(lname) - len(cut.cut.name) // the cut's name inside lname
	if r.an == 0 {
		r.noAA = true
	}
	ns := cut.rrsets[typeNS]
	r.appendRRs(ns.wire, at)
	r.ns += ns.n
	if w.signed {
		if ds := cut.rrsets[typeDS]; ds != nil {
			r.appendRRs(ds.wire, at)
			r.ns += ds.n + w.appendSig(r, &ds.sig, 0, zn, ds.rrs, at)
		} else if e := w.nsecOf(zn, cut.cut.name, cut); e != nil {
			r.appendRRs(e.wire, at)
			r.ns += e.n
		}
	}
	r.b = append(r.b, cut.cut.glue...)
	r.ar += cut.cut.glueN
}

// nsecOf returns the signed NSEC of the existing name lname at node nd,
// listing its types.
func (w *worker) nsecOf(zn *zone, lname []byte, nd *node) *sigEntry {
	return nd.nsec.get(w.now, 0, func() (*sigEntry, error) {
		return zn.sg.nsecEntry(lname, zn.negTTL, nodeTypes(nd))
	})
}

func nodeTypes(nd *node) []uint16 {
	types := make([]uint16, 0, len(nd.rrsets))
	for t := range nd.rrsets {
		types = append(types, t)
	}
	return types
}

// appendSig appends the RRSIGs of a static RRset (rrs, at message offset
// owner), made once and cached in slot, and returns how many.
func (w *worker) appendSig(r *resp, slot *sigSlot, serial uint32, zn *zone, rrs []dns.RR, owner int) int {
	e := slot.get(w.now, serial, func() (*sigEntry, error) {
		if serial != 0 {
			rrs = []dns.RR{withSerial(zn.soa, serial)}
		}
		return zn.sg.sign(rrs)
	})
	if e == nil {
		return 0
	}
	r.appendRRs(e.wire, owner)
	return e.n
}

// nodata answers that the name at owner (lname) has no records of the
// asked type; signed, with the NSEC listing the types it has (for a
// name a wildcard synthesizes, the wildcard's, made for lname).
func (w *worker) nodata(r *resp, zn *zone, apex, owner int, lname []byte, nd *node, wild bool) {
	if !w.signed {
		r.authority(zn, apex)
		return
	}
	var e *sigEntry
	if wild {
		e = zn.nxSigs.get(lname, w.now, func() (*sigEntry, error) {
			return zn.sg.nsecEntry(lname, zn.negTTL, nodeTypes(nd))
		})
	} else {
		e = w.nsecOf(zn, lname, nd)
	}
	w.deny(r, zn, apex, owner, e)
}

// deny appends a signed negative answer's authority section: the SOA
// with its RRSIGs, then the NSEC and its RRSIGs (e) owned by the name at
// message offset owner. The rcode stays NOERROR: a signed server never
// says NXDOMAIN (see [Server]).
func (w *worker) deny(r *resp, zn *zone, apex, owner int, e *sigEntry) {
	r.authority(zn, apex)
	serial := zn.soa.Serial
	if zn.ser != nil {
		serial = zn.ser.Load()
	}
	soa := zn.nodes[string(zn.apex)].rrsets[typeSOA]
	r.ns += w.appendSig(r, &zn.soaSig, serial, zn, soa.rrs, apex)
	if e != nil {
		r.appendRRs(e.wire, owner)
		r.ns += e.n
	}
}

// signAnswer appends the RRSIGs over the records at r.b[start:] (all of
// the name lname, owners still pointing at the question), cached in c
// by name and records, and returns how many.
func (w *worker) signAnswer(r *resp, c *sigMap, zn *zone, lname []byte, start int) int {
	recs := r.b[start:]
	w.key = append(append(w.key[:0], lname...), recs...)
	e := c.get(w.key, w.now, func() (*sigEntry, error) {
		rrs, err := unpackRecords(lname, recs)
		if err != nil {
			return nil, err
		}
		return zn.sg.sign(rrs)
	})
	if e == nil {
		return 0
	}
	r.b = append(r.b, e.wire...)
	return e.n
}

// serviceNode answers a query for a service's name; owner is the
// message offset of that name and apex of its zone's apex.
func (w *worker) serviceNode(r *resp, zn *zone, apex, owner int, sv *service, src netip.Addr, lname []byte) {
	switch r.q.qtype {
	case typeA, typeAAAA:
		f := 0
		if r.q.qtype == typeAAAA {
			f = 1
		}
		start, an := len(r.b), r.an
		w.serviceAnswer(r, sv, f, src)
		if w.signed && r.an > an {
			r.an += w.signAnswer(r, &sv.state().sigs, zn, lname, start)
		}
		r.patchOwners(start, owner)
		if r.rcode == 0 && r.an == an {
			w.serviceNodata(r, zn, apex, owner, sv, lname)
		}
	case typeSRV:
		st := sv.state()
		if st.srvN == 0 {
			if st.fam[0].servfail || st.fam[1].servfail {
				r.rcode = rcodeServFail
				return
			}
			w.serviceNodata(r, zn, apex, owner, sv, lname)
			return
		}
		start := len(r.b)
		r.b = append(r.b, st.srv...)
		r.an += st.srvN
		if w.signed {
			r.an += w.signAnswer(r, &st.sigs, zn, lname, start)
		}
		r.patchOwners(start, owner)
		r.b = append(r.b, st.glue...)
		r.ar = st.glueN
	case typeANY:
		w.hinfo(r, zn, sv.ttl, owner, lname)
	default:
		w.serviceNodata(r, zn, apex, owner, sv, lname)
	}
}

// serviceNodata answers NODATA for a service name; signed, the NSEC
// lists the types the service has in this snapshot.
func (w *worker) serviceNodata(r *resp, zn *zone, apex, owner int, sv *service, lname []byte) {
	if !w.signed {
		r.authority(zn, apex)
		return
	}
	st := sv.state()
	e := st.nsec.get(w.now, 0, func() (*sigEntry, error) {
		var types []uint16
		if st.fam[0].n > 0 {
			types = append(types, dns.TypeA)
		}
		if st.fam[1].n > 0 {
			types = append(types, dns.TypeAAAA)
		}
		if st.srvN > 0 {
			types = append(types, dns.TypeSRV)
		}
		return zn.sg.nsecEntry(lname, zn.negTTL, types)
	})
	w.deny(r, zn, apex, owner, e)
}

// appendRRs appends pre-packed records (each starting with a compression
// pointer to the question name) with their owner pointing to the message
// offset owner instead.
func (r *resp) appendRRs(wire []byte, owner int) {
	start := len(r.b)
	r.b = append(r.b, wire...)
	r.patchOwners(start, owner)
}

// patchOwners points the owner of every record from r.b[start:] on to the
// message offset owner. The records are the pre-packed kind: a 2-byte
// compression pointer, type, class, TTL, length and rdata.
func (r *resp) patchOwners(start, owner int) {
	if owner == headerLen {
		return // already so
	}
	hi, lo := 0xC0|byte(owner>>8), byte(owner)
	for i := start; i+12 <= len(r.b); i += 12 + int(binary.BigEndian.Uint16(r.b[i+10:])) {
		r.b[i], r.b[i+1] = hi, lo
	}
}

// authority appends the zone's SOA (negative TTL) to the authority
// section, its owner a compression pointer to the message offset apex,
// where the zone's apex is spelled (inside the question name or a CNAME
// target).
func (r *resp) authority(zn *zone, apex int) {
	r.b = append(r.b, 0xC0|byte(apex>>8), byte(apex))
	r.b = append(r.b, zn.soaRest...)
	r.ns = 1
	r.patchSerial(zn)
}

// patchSerial writes the zone's current serial into the SOA record just
// appended (its rdata ends with serial, refresh, retry, expire and
// minimum), when transfers give the zone a changing serial, and returns
// the serial the record carries.
func (r *resp) patchSerial(zn *zone) uint32 {
	if zn.ser == nil {
		return zn.soa.Serial
	}
	serial := zn.ser.Load()
	binary.BigEndian.PutUint32(r.b[len(r.b)-20:], serial)
	return serial
}

// hinfo answers an ANY query the RFC 8482 way: one synthesized HINFO
// record instead of every RRset; signed, with an RRSIG made now.
func (w *worker) hinfo(r *resp, zn *zone, ttl uint32, owner int, lname []byte) {
	start := len(r.b)
	r.b = append(r.b, 0xC0|byte(owner>>8), byte(owner))
	r.b = appendRRHeader(r.b, typeHINFO, ttl, 9)
	r.b = append(r.b, 7, 'R', 'F', 'C', '8', '4', '8', '2', 0)
	r.an++
	if !w.signed {
		return
	}
	rrs, err := unpackRecords(lname, r.b[start:])
	if err != nil {
		return
	}
	if e, err := zn.sg.sign(rrs); err == nil {
		r.appendRRs(e.wire, owner)
		r.an += e.n
	}
}

// hostAnswer answers the SRV target names under a service. It reports
// false if lname is not one.
func (w *worker) hostAnswer(r *resp, zn *zone, apex, owner int, lname []byte) bool {
	pn := zn.nodes[string(lname[lname[0]+1:])]
	if pn == nil || pn.svc == nil {
		return false
	}
	st := pn.svc.state()
	ref, ok := st.hosts[string(lname[1:1+lname[0]])]
	if !ok {
		return false
	}
	switch {
	case r.q.qtype == typeA && ref.fam == 0, r.q.qtype == typeAAAA && ref.fam == 1:
		fs := &st.fam[ref.fam]
		i := int(ref.idx) * fs.stride
		start := len(r.b)
		r.b = append(r.b, fs.wire[i:i+fs.stride]...)
		r.an++
		if w.signed {
			r.an += w.signAnswer(r, &st.sigs, zn, lname, start)
		}
		r.patchOwners(start, owner)
	case r.q.qtype == typeANY:
		w.hinfo(r, zn, pn.svc.ttl, owner, lname)
	case !w.signed:
		r.authority(zn, apex)
	default:
		typ := uint16(dns.TypeA)
		if ref.fam == 1 {
			typ = dns.TypeAAAA
		}
		e, _ := zn.sg.nsecEntry(lname, zn.negTTL, []uint16{typ})
		w.deny(r, zn, apex, owner, e)
	}
	return true
}

// maxPickTries bounds the picks one answer asks the pool's picker for,
// per name answered: picks of the other address family or of a name
// already in the answer are retried until then.
const maxPickTries = 8

// picks appends k distinct records of family f, the first chosen by the
// snapshot's picker with info. With a key, the others are picks with
// keys derived from it, so they too stay the same per key while the
// ready set does. Without one, the others are the records after the
// first: one pick per answer keeps the picker's own sequence (a weighted
// round robin's schedule) intact, so the first name, the one most clients
// use, follows the pool's policy exactly. A pick of the other family or
// of an address already named is retried, up to maxPickTries per record;
// what is still missing (the picker favours the other family, or nothing
// of f is ready and the records are a fallback) is filled in record
// order, from a start that depends only on the key (Lamping and Veach's
// jump hash) or rotates when there is none.
func (w *worker) picks(r *resp, st *svcState, f int, info balancer.PickInfo, k int) {
	fs := &st.fam[f]
	w.picked = w.picked[:0]
	if !fs.fallback {
		for try := 0; len(w.picked) < k && try < maxPickTries*k; try++ {
			in := info
			if try > 0 && info.HasKey {
				in = balancer.WithKey(balancer.Mix64(info.Key + uint64(try)))
			} else if len(w.picked) > 0 {
				break // unkeyed: one pick, then its successors
			}
			ep, err := st.snap.Picker.Pick(in)
			if err != nil {
				break
			}
			i, ok := st.refs[ep]
			if !ok || famOf(ep.Addr().Addr()) != f || slices.Contains(w.picked, i) {
				continue
			}
			w.picked = append(w.picked, i)
		}
	}
	if len(w.picked) < k {
		var start int
		switch {
		case info.HasKey:
			start = jump(info.Key, fs.n)
		case len(w.picked) > 0:
			start = int(w.picked[0]) + 1
		default:
			start = int(w.rot % uint32(fs.n))
			w.rot++
		}
		for j := 0; len(w.picked) < k; j++ {
			if i := int32((start + j) % fs.n); !slices.Contains(w.picked, i) {
				w.picked = append(w.picked, i)
			}
		}
	}
	for _, i := range w.picked {
		o := int(i) * fs.stride
		r.b = append(r.b, fs.wire[o:o+fs.stride]...)
	}
	r.an += k
}

// serviceAnswer appends the A (f = 0) or AAAA (f = 1) records the
// service's policy chooses for this query.
func (w *worker) serviceAnswer(r *resp, sv *service, f int, src netip.Addr) {
	st := sv.state()
	fs := &st.fam[f]
	if fs.servfail {
		r.rcode = rcodeServFail
		return
	}
	n := fs.n
	if n == 0 {
		return // NODATA
	}
	stride := fs.stride
	switch sv.cfg.Policy {
	case PolicyAll:
		i := int(w.rot%uint32(n)) * stride
		w.rot++
		r.b = append(r.b, fs.wire[i:]...)
		r.b = append(r.b, fs.wire[:i]...)
		r.an += n
	case PolicyWeighted:
		w.picks(r, st, f, balancer.PickInfo{}, min(sv.count, n))
	case PolicyConsistent:
		addr, nbits, ecs := clientSubnet(r.q, src)
		if ecs {
			kb := sv.key.Bits6
			if addr.Is4() {
				kb = sv.key.Bits4
			}
			if kb == 0 {
				kb = addr.BitLen()
			}
			r.scope = uint8(min(nbits, kb))
		}
		w.picks(r, st, f, sv.key.Client(addr), min(sv.count, n))
	case PolicyNearest:
		addr, _, ecs := clientSubnet(r.q, src)
		ri, scope := sv.nearest(addr)
		if ecs {
			r.scope = scope
		}
		var list []int32
		if ri >= 0 {
			list = fs.byRule[ri]
		}
		k := sv.count
		if len(list) == 0 {
			if k == 0 || k > n {
				k = n
			}
			start := int(w.rot % uint32(n))
			w.rot++
			for j := range k {
				i := (start + j) % n * stride
				r.b = append(r.b, fs.wire[i:i+stride]...)
			}
			r.an += k
			return
		}
		m := len(list)
		if k == 0 || k > m {
			k = m
		}
		start := int(w.rot % uint32(m))
		w.rot++
		for j := range k {
			i := int(list[(start+j)%m]) * stride
			r.b = append(r.b, fs.wire[i:i+stride]...)
		}
		r.an += k
	}
}
