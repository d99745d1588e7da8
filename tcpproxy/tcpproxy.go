package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/balancer/weighted"
	"github.com/lbkit/lbkit/health"
	"github.com/lbkit/lbkit/internal/serve"
	"github.com/lbkit/lbkit/proxyproto"
)

// Defaults for [Config] fields left zero.
const (
	DefaultDialTimeout  = 3 * time.Second
	DefaultDialAttempts = 3
	DefaultIdleTimeout  = 10 * time.Minute
)

// ErrServerClosed is returned by [Server.Serve] and [Server.ListenAndServe] after
// [Server.Shutdown] was called.
var ErrServerClosed = errors.New("tcpproxy: TCP proxy closed")

// ErrNoBackend is what a client connection fails with (in logs) when no
// backend accepted it: none ready, all at their connection limit, or every
// dial attempt failed.
var ErrNoBackend = errors.New("tcpproxy: no backend took the connection")

// Config configures a [Server] proxy. Backends or Pool is required; every
// other field has a useful zero value, documented on the field.
type Config struct {
	// Backends are the members of the proxy's own pool, used when Pool
	// is nil.
	Backends []balancer.Backend
	// Pool is the pool to pick from. Nil means the proxy builds its own
	// from Builder and Backends. Drive its health with
	// health.Checker.Drive or Pool.SetHealthy.
	Pool *balancer.Pool
	// Builder is the policy of the proxy's own pool. Nil means round
	// robin when every backend has the same weight, smooth weighted round
	// robin when weights differ, and Maglev with SourceHash.
	Builder balancer.Builder

	// SourceHash makes the pick key balancer.HashAddr of the client's IP
	// address, so a hash-based policy keeps a client on one backend.
	SourceHash bool

	// DialTimeout bounds each connection attempt to a backend. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// DialAttempts is how many distinct backends a client connection may
	// be tried on when dialing fails or a backend is at its limit. Zero
	// means DefaultDialAttempts.
	DialAttempts int
	// IdleTimeout closes a connection on which neither side sent anything
	// for that long (detected between IdleTimeout and twice it). Zero
	// means DefaultIdleTimeout; negative disables it.
	IdleTimeout time.Duration
	// MaxConnsPerBackend caps this proxy's open connections to each
	// backend. A full backend is skipped for another; when all tried are
	// full the client connection is closed. Zero means no limit.
	MaxConnsPerBackend int

	// ProxyProtocol, when 1 or 2, sends a PROXY protocol header of that
	// version to the backend first, carrying the client's address and the
	// address it connected to. Zero sends none.
	ProxyProtocol int

	// Observer receives a passive outcome for every dial: failed, or
	// succeeded with the connect time. Nil means none. A health.Checker
	// fits.
	Observer health.Observer

	// Logger receives connection failures at debug level and accept
	// errors at warn level. Nil means slog.Default().
	Logger *slog.Logger
}

// Server is a layer-4 proxy: it accepts TCP connections, picks a backend from
// a [balancer.Pool], connects to it (another backend if that fails) and
// copies bytes both ways, with half-close, idle timeout, per-backend
// connection limits, an optional PROXY protocol header and graceful drain.
// Between two *net.TCPConn the copy uses splice(2) on Linux, so payload
// does not pass through user space.
//
// All methods are safe for concurrent use. Serve blocks until the proxy
// shuts down; each connection runs on its own goroutines.
type Server struct {
	cfg      Config
	pool     *balancer.Pool
	own      bool
	log      *slog.Logger
	dialer   net.Dialer
	attempts int
	idle     time.Duration

	counts sync.Map // netip.AddrPort → *atomic.Int64, only with MaxConnsPerBackend

	g serve.Group[*tcpConn]
}

// tcpConn is one proxied connection: the client side and, once dialed,
// the backend side.
type tcpConn struct {
	client  net.Conn
	ctx     context.Context    // Serve's, ended by Close
	cancel  context.CancelFunc // ends dials in progress; set before Close can run
	mu      sync.Mutex
	backend net.Conn
	closed  bool
}

// Close closes both sides and cancels a dial in progress; it is
// idempotent and returns the client side's error.
func (c *tcpConn) Close() error {
	c.cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	err := c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
	return err
}

// setBackend records the backend side, or reports false (and closes b)
// when the connection was closed meanwhile.
func (c *tcpConn) setBackend(b net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		b.Close()
		return false
	}
	c.backend = b
	return true
}

// New validates cfg and returns a proxy that is not yet serving.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Pool == nil && len(cfg.Backends) == 0:
		return nil, errors.New("tcpproxy: Config needs Backends or a Pool")
	case cfg.DialTimeout < 0:
		return nil, errors.New("tcpproxy: DialTimeout must not be negative")
	case cfg.DialAttempts < 0:
		return nil, errors.New("tcpproxy: DialAttempts must not be negative")
	case cfg.MaxConnsPerBackend < 0:
		return nil, errors.New("tcpproxy: MaxConnsPerBackend must not be negative")
	case cfg.ProxyProtocol < 0 || cfg.ProxyProtocol > 2:
		return nil, fmt.Errorf("tcpproxy: ProxyProtocol %d is not 0, 1 or 2", cfg.ProxyProtocol)
	}
	p := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		attempts: cfg.DialAttempts,
		idle:     cfg.IdleTimeout,
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.attempts == 0 {
		p.attempts = DefaultDialAttempts
	}
	if p.idle == 0 {
		p.idle = DefaultIdleTimeout
	}
	p.dialer.Timeout = cfg.DialTimeout
	if p.dialer.Timeout == 0 {
		p.dialer.Timeout = DefaultDialTimeout
	}
	if cfg.Pool != nil {
		p.pool = cfg.Pool
		for _, b := range cfg.Backends {
			if err := p.pool.Add(b); err != nil {
				return nil, fmt.Errorf("tcpproxy: %w", err)
			}
		}
	} else {
		builder := cfg.Builder
		if builder == nil {
			builder = defaultBuilder(cfg)
		}
		pool, err := balancer.New(balancer.Config{Builder: builder, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("tcpproxy: %w", err)
		}
		if err := pool.Set(cfg.Backends); err != nil {
			return nil, fmt.Errorf("tcpproxy: %w", err)
		}
		p.pool, p.own = pool, true
	}
	return p, nil
}

// defaultBuilder returns the policy used when Config.Builder is nil.
func defaultBuilder(cfg Config) balancer.Builder {
	if cfg.SourceHash {
		return maglev.Builder{}
	}
	for _, b := range cfg.Backends {
		if max(b.Weight, 1) != max(cfg.Backends[0].Weight, 1) {
			return weighted.Builder{}
		}
	}
	return roundrobin.Builder{}
}

// Pool returns the pool the proxy picks from.
func (p *Server) Pool() *balancer.Pool { return p.pool }

// ListenAndServe listens on the TCP address addr and calls [Server.Serve].
func (p *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := serve.Listen(ctx, "tcpproxy", addr)
	if err != nil {
		return err
	}
	return p.Serve(ctx, ln)
}

// Serve accepts connections on ln and proxies each until ln fails, ctx
// ends or [Server.Shutdown] is called. It closes ln before returning. When ctx
// ends, Serve also closes every connection it accepted and returns
// ctx.Err(); after Shutdown it returns [ErrServerClosed] and leaves open
// connections to Shutdown.
func (p *Server) Serve(ctx context.Context, ln net.Listener) error {
	return p.g.Serve(ctx, ln, &serve.Config[*tcpConn]{
		Name:      "tcpproxy",
		Closed:    ErrServerClosed,
		Logger:    p.log,
		Temporary: tcpTemporary,
		OwnConns:  true,
		Open: func(ctx context.Context, c net.Conn) *tcpConn {
			cctx, cancel := context.WithCancel(ctx)
			return &tcpConn{client: c, ctx: cctx, cancel: cancel}
		},
		Serve: p.handle,
	})
}

// tcpTemporary reports accept errors worth retrying (out of file
// descriptors or memory, aborted handshakes).
func tcpTemporary(err error) bool {
	return serve.Temporary(err) || errors.Is(err, syscall.ENOMEM) || errors.Is(err, os.ErrDeadlineExceeded)
}

// Shutdown stops the proxy gracefully: it closes every listener at once,
// waits for open connections to finish by themselves until ctx ends, then
// closes those left and waits for their goroutines. It returns nil when
// every connection finished by itself and ctx.Err() otherwise. Serve
// returns ErrServerClosed. Shutdown also releases the proxy's own pool.
func (p *Server) Shutdown(ctx context.Context) error {
	err := p.g.Shutdown(ctx, nil)
	if p.own {
		p.pool.Close()
	}
	return err
}

// handle proxies one client connection.
func (p *Server) handle(c *tcpConn) {
	defer c.Close()
	ctx := c.ctx
	client := tcpAddrPort(c.client.RemoteAddr())
	var info balancer.PickInfo
	if p.cfg.SourceHash && client.IsValid() {
		info = balancer.WithKey(balancer.HashAddr(client.Addr()))
	}

	backend, ep, connect, err := p.connect(ctx, info)
	if err != nil {
		p.log.Debug("tcpproxy: client connection dropped", "client", client, "err", err)
		return
	}
	defer p.release(ep.Addr())
	if !c.setBackend(backend) {
		ep.Done(net.ErrClosed, connect)
		return
	}
	if v := p.cfg.ProxyProtocol; v != 0 {
		h := proxyproto.Header{
			Version:     proxyproto.Version(v),
			Transport:   proxyproto.TCP,
			Source:      client,
			Destination: tcpAddrPort(c.client.LocalAddr()),
		}
		var buf [proxyproto.V1MaxLen]byte // fits v1 and v2 without TLVs
		if _, err := backend.Write(h.Append(buf[:0])); err != nil {
			ep.Done(err, connect)
			return
		}
	}
	err = p.pipe(c.client, backend)
	ep.Done(err, connect)
}

// connect picks and dials backends until one accepts, trying up to
// p.attempts distinct ones. It returns the connection, its endpoint (with
// Start called and a limit slot held) and the connect time.
func (p *Server) connect(ctx context.Context, info balancer.PickInfo) (net.Conn, *balancer.Endpoint, time.Duration, error) {
	var tried [8]netip.AddrPort
	triedList := tried[:0]
	lastErr := ErrNoBackend
	for attempt := 0; attempt < p.attempts; attempt++ {
		ep := p.pickUntried(info, triedList)
		if ep == nil {
			break
		}
		addr := ep.Addr()
		triedList = append(triedList, addr)
		if !p.acquire(addr) {
			lastErr = fmt.Errorf("%w: %v is at its connection limit", ErrNoBackend, addr)
			continue
		}
		ep.Start()
		start := time.Now()
		conn, err := p.dialer.DialContext(ctx, "tcp", addr.String())
		connect := time.Since(start)
		if err != nil {
			ep.Done(err, 0)
			p.release(addr)
			if p.cfg.Observer != nil {
				p.cfg.Observer.Observe(addr, health.Outcome{Failed: true})
			}
			lastErr = fmt.Errorf("tcpproxy: dial %v: %w", addr, err)
			if ctx.Err() != nil {
				return nil, nil, 0, lastErr
			}
			continue
		}
		if p.cfg.Observer != nil {
			p.cfg.Observer.Observe(addr, health.Outcome{Latency: connect})
		}
		return conn, ep, connect, nil
	}
	return nil, nil, 0, lastErr
}

// pickUntried picks an endpoint not in tried: from the picker (a few
// times, varying the key), then by scanning the ready set from a random
// or key-derived offset. It returns nil when every ready endpoint was
// tried.
func (p *Server) pickUntried(info balancer.PickInfo, tried []netip.AddrPort) *balancer.Endpoint {
	snap := p.pool.Snapshot()
	for range 3 {
		ep, err := snap.Pick(info)
		if err != nil {
			return nil
		}
		if !tcpContains(tried, ep.Addr()) {
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
		if !tcpContains(tried, ep.Addr()) {
			return ep
		}
	}
	return nil
}

func tcpContains(list []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// acquire takes a connection slot on addr, or reports false when it is at
// MaxConnsPerBackend.
func (p *Server) acquire(addr netip.AddrPort) bool {
	limit := int64(p.cfg.MaxConnsPerBackend)
	if limit == 0 {
		return true
	}
	v, ok := p.counts.Load(addr)
	if !ok {
		v, _ = p.counts.LoadOrStore(addr, new(atomic.Int64))
	}
	n := v.(*atomic.Int64)
	for {
		cur := n.Load()
		if cur >= limit {
			return false
		}
		if n.CompareAndSwap(cur, cur+1) {
			return true
		}
	}
}

func (p *Server) release(addr netip.AddrPort) {
	if p.cfg.MaxConnsPerBackend == 0 {
		return
	}
	if v, ok := p.counts.Load(addr); ok {
		v.(*atomic.Int64).Add(-1)
	}
}

// BackendConns returns the number of connections this proxy holds open to
// addr. It is tracked only when MaxConnsPerBackend is set; otherwise it is
// always 0.
func (p *Server) BackendConns(addr netip.AddrPort) int {
	if v, ok := p.counts.Load(addr); ok {
		return int(v.(*atomic.Int64).Load())
	}
	return 0
}

// pipe copies both ways until both directions ended, one failed or the
// connection went idle. A direction that reaches EOF half-closes its
// destination, so the other side still gets its reply through. It returns
// the first error that was not a clean end.
func (p *Server) pipe(client, backend net.Conn) error {
	var idle [2]atomic.Bool
	errc := make(chan error, 1)
	go func() { errc <- p.copyDir(backend, client, &idle[0], &idle[1]) }()
	err := p.copyDir(client, backend, &idle[1], &idle[0])
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
func (p *Server) copyDir(dst, src net.Conn, mine, other *atomic.Bool) error {
	if p.idle < 0 {
		_, err := io.Copy(dst, src)
		return p.finish(dst, src, err, mine)
	}
	for {
		src.SetReadDeadline(time.Now().Add(p.idle))
		n, err := io.Copy(dst, src)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return p.finish(dst, src, err, mine)
		}
		if n > 0 {
			mine.Store(false)
			continue
		}
		mine.Store(true)
		if other.Load() {
			return p.finish(dst, src, fmt.Errorf("tcpproxy: connection idle for %v: %w", p.idle, os.ErrDeadlineExceeded), mine)
		}
	}
}

// finish ends a direction: at EOF (err nil) it half-closes dst; on an
// error it closes dst and src, which ends the other direction too.
func (p *Server) finish(dst, src net.Conn, err error, mine *atomic.Bool) error {
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

// tcpAddrPort returns a's address and port, or the zero value.
func tcpAddrPort(a net.Addr) netip.AddrPort {
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
