package tcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/proxyproto"
)

// conn is one proxied connection: the client side and, once dialed, the
// backend side.
type conn struct {
	client  net.Conn
	ctx     context.Context    // Serve's, ended by Close
	cancel  context.CancelFunc // ends dials in progress; set before Close can run
	mu      sync.Mutex
	backend net.Conn
	closed  bool
	flow    *flow // set once an event loop owns the sockets
}

// Close closes both sides and cancels a dial in progress; it is
// idempotent and returns the client side's error.
func (c *conn) Close() error {
	c.cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.flow != nil {
		c.flow.shut() // the loop closes the sockets
		return nil
	}
	err := c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
	return err
}

// closeConns closes both sides; the event loop that owned them calls it.
func (c *conn) closeConns() {
	c.client.Close()
	c.backend.Close()
}

// setBackend records the backend side, or reports false (and closes b)
// when the connection was closed meanwhile.
func (c *conn) setBackend(b net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		b.Close()
		return false
	}
	c.backend = b
	return true
}

// headerReaders holds the buffered readers that take a client's PROXY
// header off its connection (with AcceptProxyProtocol only). Their size
// bounds the header, TLVs included.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// handle proxies one client connection with the settings current when it
// starts.
func (s *Server) handle(c *conn) {
	handed := false // to an event loop, which closes c
	defer func() {
		if !handed {
			c.Close()
		}
	}()
	st := s.set.Load()
	client, local := addrPort(c.client.RemoteAddr()), addrPort(c.client.LocalAddr())

	// With AcceptProxyProtocol, the client's header names the real
	// client; bytes read past it go to the backend first.
	var early []byte
	if st.cfg.AcceptProxyProtocol {
		br := headerReaders.Get().(*bufio.Reader)
		defer headerReaders.Put(br)
		br.Reset(c.client)
		defer br.Reset(nil)
		h, err := readHeader(c.client, br, st.header)
		if err != nil {
			st.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
			return
		}
		if !h.Local && h.Source.IsValid() {
			client, local = h.Source, h.Destination
		}
		early, _ = br.Peek(br.Buffered())
	}

	// TLS: terminated here, or the ClientHello read for its server name.
	pool, down := st.cfg.Pool, c.client // down: where the client's bytes are read and written
	var tlvs []proxyproto.TLV
	switch {
	case st.tls != nil:
		tc, err := handshake(c, early, st.tls, st.header)
		if err != nil {
			st.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
			return
		}
		early, down = nil, tc
		cs := tc.ConnectionState()
		pool = route(st.routes, cs.ServerName, pool)
		if cs.NegotiatedProtocol != "" {
			tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.TypeALPN, Value: []byte(cs.NegotiatedProtocol)})
		}
		if cs.ServerName != "" {
			tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.TypeAuthority, Value: []byte(cs.ServerName)})
		}
	case st.routes != nil:
		name, read, err := peekHello(c.client, io.MultiReader(bytes.NewReader(early), c.client), st.header)
		if err != nil {
			st.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
			return
		}
		early, pool = read, route(st.routes, name, pool)
	}

	info := st.cfg.Key.Flow(balancer.TCP, client, local)
	backend, ep, slot, connect, err := s.connect(c.ctx, st, pool, info)
	if err != nil {
		st.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
		return
	}
	if !c.setBackend(backend) {
		slot.Add(-1)
		ep.Done(nil, connect) // closed by Close or Shutdown: not the backend's fault
		return
	}
	if v := st.cfg.ProxyProtocol; v != 0 || len(early) > 0 {
		var buf [proxyproto.V1MaxLen]byte // fits v1 and v2 without TLVs
		b := buf[:0]
		if v != 0 {
			h := headerFor(v, client, local)
			if v == proxyproto.V2 {
				h.TLVs = tlvs
			}
			b = h.Append(b)
		}
		if _, err := backend.Write(append(b, early...)); err != nil {
			slot.Add(-1)
			ep.Done(fmt.Errorf("tcpproxy: write to %v: %w", ep.Addr(), err), connect)
			return
		}
	}
	// Once connected, the connection counts as a success for the
	// backend however it ends: a reset or an idle timeout mid-stream
	// cannot be told apart from the client's doing (HAProxy's "observe
	// layer4" judges connects the same way).
	done := func(err error) {
		slot.Add(-1)
		if err != nil {
			st.log.Debug("tcpproxy: connection ended", "client", client, "backend", ep.Addr(), "err", err)
		}
		ep.Done(nil, connect)
	}
	if dc, ok := down.(*net.TCPConn); ok {
		if bc, ok := backend.(*net.TCPConn); ok && s.handOff(c, dc, bc, st.idle, done) {
			handed = true
			return
		}
	}
	done(pipe(down, backend, st.idle))
}

// handshake terminates TLS on c's client connection within timeout (or
// until c is closed); early are client bytes already read.
func handshake(c *conn, early []byte, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	raw := c.client
	if len(early) > 0 {
		raw = &prefixConn{Conn: c.client, r: io.MultiReader(bytes.NewReader(early), c.client)}
	}
	tc := tls.Server(raw, cfg)
	c.client.SetDeadline(time.Now().Add(timeout))
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return nil, fmt.Errorf("tcpproxy: TLS handshake: %w", err)
	}
	return tc, c.client.SetDeadline(time.Time{})
}

// prefixConn is a connection whose reads come from r: bytes already read
// from Conn, then Conn.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// headerFor is the PROXY header of version v naming client, which
// connected to local.
func headerFor(v proxyproto.Version, client, local netip.AddrPort) proxyproto.Header {
	return proxyproto.Header{Version: v, Transport: proxyproto.TCP, Source: client, Destination: local}
}

// readHeader reads the client's PROXY header through br within timeout.
func readHeader(c net.Conn, br *bufio.Reader, timeout time.Duration) (proxyproto.Header, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	h, err := proxyproto.Read(br)
	if err != nil {
		return h, fmt.Errorf("tcpproxy: client's PROXY header: %w", err)
	}
	return h, c.SetReadDeadline(time.Time{})
}

// connect picks from pool and dials backends until one accepts, trying up to
// st.attempts distinct ones. It returns the connection, its endpoint (with
// Start called), the per-backend count holding its slot and the connect
// time. A failed dial is reported to the endpoint (and so to passive
// health), unless it failed because the server is stopping.
func (s *Server) connect(ctx context.Context, st *settings, pool *balancer.Pool, info balancer.PickInfo) (net.Conn, *balancer.Endpoint, *atomic.Int64, time.Duration, error) {
	var tried [8]netip.AddrPort
	triedList := tried[:0]
	lastErr := ErrNoBackend
	for attempt := 0; attempt < st.attempts; attempt++ {
		ep := pickUntried(pool, info, triedList)
		if ep == nil {
			break
		}
		addr := ep.Addr()
		triedList = append(triedList, addr)
		slot := s.acquire(addr, st.limit)
		if slot == nil {
			lastErr = fmt.Errorf("%w: %v is at its connection limit", ErrNoBackend, addr)
			continue
		}
		ep.Start()
		start := time.Now()
		conn, err := st.dialer.DialContext(ctx, "tcp", addr.String())
		connect := time.Since(start)
		if err != nil {
			slot.Add(-1)
			lastErr = fmt.Errorf("tcpproxy: dial %v: %w", addr, err)
			if ctx.Err() != nil {
				ep.Done(nil, 0)
				return nil, nil, nil, 0, lastErr
			}
			ep.Done(lastErr, 0)
			continue
		}
		return conn, ep, slot, connect, nil
	}
	return nil, nil, nil, 0, lastErr
}

// pickUntried picks an endpoint of pool not in tried: from the picker (a
// few times, varying the key), then by scanning the ready set from a
// random or key-derived offset. It returns nil when every ready endpoint
// was tried.
func pickUntried(pool *balancer.Pool, info balancer.PickInfo, tried []netip.AddrPort) *balancer.Endpoint {
	snap := pool.Snapshot()
	for range 3 {
		ep, err := snap.Pick(info)
		if err != nil {
			return nil
		}
		if !contains(tried, ep.Addr()) {
			return ep
		}
		if info.HasKey {
			info.Key = balancer.Mix64(info.Key)
		}
	}
	n := len(snap.Ready)
	if n == 0 {
		return nil
	}
	off := rand.IntN(n)
	if info.HasKey {
		off = int(info.Key % uint64(n))
	}
	for i := range n {
		ep := snap.Ready[(off+i)%n].Endpoint
		if !contains(tried, ep.Addr()) {
			return ep
		}
	}
	return nil
}

func contains(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// acquire takes a connection slot on addr and returns its count, or nil
// when addr is at limit (zero: no limit). The caller gives the slot back
// with Add(-1) on the returned count, which stays right when the limit
// changes meanwhile.
func (s *Server) acquire(addr netip.AddrPort, limit int64) *atomic.Int64 {
	v, ok := s.counts.Load(addr)
	if !ok {
		v, _ = s.counts.LoadOrStore(addr, new(atomic.Int64))
	}
	n := v.(*atomic.Int64)
	if limit == 0 {
		n.Add(1)
		return n
	}
	for {
		cur := n.Load()
		if cur >= limit {
			return nil
		}
		if n.CompareAndSwap(cur, cur+1) {
			return n
		}
	}
}

// pipe copies both ways until both directions ended, one failed or the
// connection went idle for idle (negative: never). A direction that
// reaches EOF half-closes its destination, so the other side still gets
// its reply through. It returns the first error that was not a clean end.
func pipe(client, backend net.Conn, idle time.Duration) error {
	var quiet [2]atomic.Bool
	errc := make(chan error, 1)
	go func() { errc <- copyDir(backend, client, idle, &quiet[0], &quiet[1]) }()
	err := copyDir(client, backend, idle, &quiet[1], &quiet[0])
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

// copyDir copies src to dst. With an idle timeout it copies in rounds
// bounded by a read deadline on src: a round that moved nothing marks this
// direction idle, and when the other direction is idle too (or finished)
// the connection is idle and copyDir fails with os.ErrDeadlineExceeded. At
// EOF it half-closes dst and marks itself idle for good.
func copyDir(dst, src net.Conn, idle time.Duration, mine, other *atomic.Bool) error {
	if idle < 0 {
		_, err := io.Copy(dst, src)
		return finish(dst, src, err, mine)
	}
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := io.Copy(dst, src)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return finish(dst, src, err, mine)
		}
		if n > 0 {
			mine.Store(false)
			continue
		}
		mine.Store(true)
		if other.Load() {
			return finish(dst, src, fmt.Errorf("tcpproxy: connection idle for %v: %w", idle, os.ErrDeadlineExceeded), mine)
		}
	}
}

// finish ends a direction: at EOF (err nil) it half-closes dst; on an
// error it closes dst and src, which ends the other direction too.
func finish(dst, src net.Conn, err error, mine *atomic.Bool) error {
	mine.Store(true)
	if err != nil {
		dst.Close()
		src.Close()
		if errors.Is(err, net.ErrClosed) {
			return nil // the other direction aborted and closed us
		}
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ENOTCONN) {
			return err
		}
		return nil
	}
	return dst.Close()
}

// addrPort returns a's address and port, or the zero value.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
