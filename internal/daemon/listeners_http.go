package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/certs"
	"github.com/lbkit/lbkit/proxy"
	"github.com/lbkit/lbkit/redirect"
)

// netServer is the lifecycle every lbkit socket server shares.
type netServer interface {
	Serve(ctx context.Context, ln net.Listener) error
	Shutdown(ctx context.Context) error
	Close() error
}

// built is a server made from a listener's declaration, with what must be
// released when it is retired.
type built struct {
	srv     netServer
	cleanup func()
}

// swapServer runs a listener whose changes are applied by building a new
// server and giving it a listener of its own on the same socket (see
// socket): the socket and the old server's connections are kept, and no
// connection is refused.
type swapServer struct {
	name   string
	log    *slog.Logger
	sock   *socket
	build  func(l *config.Listener, pools map[string]*poolState) (built, error)
	drain  time.Duration
	served func(listener string, ln net.Listener) // env.served

	mu     sync.Mutex
	cur    *generation
	runs   sync.WaitGroup // Serve calls of every server, current and retired
	olds   sync.WaitGroup // retired servers draining
	force  context.Context
	forceF context.CancelFunc // ends the retired servers' drain (close)
	done   chan struct{}
	close1 sync.Once
}

// generation is one of a swapServer's servers with the listener it
// serves.
type generation struct {
	built
	ln      net.Listener
	retired atomic.Bool   // ln was closed by the daemon: Serve's error is expected
	served  chan struct{} // closed when Serve returned
}

// stopAcceptWait bounds the wait for a retired server to stop accepting
// after its listener is closed. A server notices at once, except on the
// event loops of proxy.Server and redirect.Server (internal/evloop), which
// accept on a descriptor of their own and look for their listener's close
// every sweep (at most 250ms apart).
const stopAcceptWait = time.Second

// firstRequestWait is how long after its listener closed a server goes
// on serving before its Shutdown starts. Shutdown closes the connections
// waiting for a request, and one accepted just before the server stopped
// accepting has yet to send its first: lbkit's servers close it even when
// the request is on its way (net/http spares connections younger than five
// seconds). It is twice the longest time between the event loops'
// sweeps, so what they accepted until they noticed the close is read
// first.
// The server's connections are served meanwhile, by the old
// configuration.
const firstRequestWait = 500 * time.Millisecond

// stopAccepting closes g's listener and waits until its Serve returned
// (the server takes no more connections; for up to stopAcceptWait) and
// firstRequestWait passed since the close, or until ctx ends. Only then is
// the server to be shut down. During a reload it also keeps the retired
// server from taking connections from the socket while it drains.
//
// The wait runs from the close, not from Serve's return: the event loops
// notice the close on a sweep, and evloop.Engine.Stop deadlocks with a
// sweep that starts meanwhile (Stop holds the engine's lock while the
// loops end; the first loop's sweep takes it), so a Shutdown a fixed time
// after a sweep would often meet the next one.
func (g *generation) stopAccepting(ctx context.Context) {
	g.retired.Store(true)
	g.ln.Close()
	first := time.NewTimer(firstRequestWait)
	defer first.Stop()
	stop := time.NewTimer(stopAcceptWait)
	defer stop.Stop()
	select {
	case <-g.served:
	case <-stop.C:
	case <-ctx.Done():
		return
	}
	select {
	case <-first.C:
	case <-ctx.Done():
	}
}

func startSwap(e env, l *config.Listener, pools map[string]*poolState, done chan struct{},
	build func(l *config.Listener, pools map[string]*poolState) (built, error)) (server, error) {
	b, err := build(l, pools)
	if err != nil {
		return nil, err
	}
	ln, err := listen(e.ctx, l)
	if err != nil {
		b.cleanup()
		return nil, err
	}
	log := e.log.With("listener", l.Name)
	s := &swapServer{name: l.Name, log: log, sock: newSocket(ln, log), build: build, drain: config.DefaultShutdownTimeout,
		served: e.served, done: done}
	s.force, s.forceF = context.WithCancel(context.Background())
	s.cur = s.serve(b)
	return s, nil
}

// serve runs b on a new listener of s.sock and makes that listener the
// one new connections go to.
func (s *swapServer) serve(b built) *generation {
	g := &generation{built: b, ln: s.sock.listener(), served: make(chan struct{})}
	if s.served != nil {
		s.served(s.name, g.ln)
	}
	s.runs.Add(1)
	go func() {
		defer s.runs.Done()
		defer close(g.served)
		if err := g.srv.Serve(context.Background(), g.ln); err != nil && !g.retired.Load() {
			s.log.Error("daemon: listener stopped", "err", err)
		}
		// Serve closed g.ln; closing it again makes sure the socket's
		// duplicate descriptor is released whatever the server did.
		g.ln.Close()
	}()
	s.sock.activate(g.ln)
	return g
}

func (s *swapServer) update(l *config.Listener, pools map[string]*poolState) error {
	b, err := s.build(l, pools)
	if err != nil {
		return err
	}
	next := s.serve(b)
	s.mu.Lock()
	old := s.cur
	s.cur = next
	s.mu.Unlock()
	s.olds.Add(1)
	go func() {
		defer s.olds.Done()
		ctx, cancel := context.WithTimeout(s.force, s.drain)
		defer cancel()
		old.stopAccepting(ctx)
		if err := old.srv.Shutdown(ctx); err != nil {
			old.srv.Close()
		}
		old.cleanup()
	}()
	return nil
}

// shutdown closes the socket and the server's listener, so the port
// stops accepting, and drains the server, and those retired by reloads,
// until ctx ends.
func (s *swapServer) shutdown(ctx context.Context) error {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	s.sock.close()
	stop := context.AfterFunc(ctx, s.forceF)
	defer stop()
	cur.stopAccepting(ctx)
	err := cur.srv.Shutdown(ctx)
	if err != nil {
		cur.srv.Close()
	}
	s.finish(cur)
	return err
}

// close stops the server and those retired by reloads now.
func (s *swapServer) close() error {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	s.sock.close()
	s.forceF()
	cur.retired.Store(true)
	err := cur.srv.Close()
	s.finish(cur)
	return err
}

func (s *swapServer) finish(cur *generation) {
	s.close1.Do(func() {
		s.olds.Wait()
		s.forceF()
		s.runs.Wait()
		cur.cleanup()
		close(s.done)
	})
}

// ---- http ----

// trusted parses trusted-proxy prefixes.
func trusted(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := config.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// recorder logs and counts one outcome per request from the proxy's
// attempt hook: the last attempt of a request carries its retries.
func recorder(e env, listener, pool string) func(a *proxy.Attempt) {
	return func(a *proxy.Attempt) {
		if a.Retried {
			return
		}
		member := ""
		if a.Backend != nil {
			member = a.Backend.Addr().String()
		}
		e.metrics.Record(Outcome{Listener: listener, Pool: pool, Member: member, Code: a.Status, Err: a.Err,
			Elapsed: a.Duration, Bytes: a.Bytes, Retries: a.Try - 1})
		if e.access != nil {
			r := a.Request
			e.access.Log(Entry{Time: time.Now(), Client: r.RemoteAddr, Listener: listener, Pool: pool, Upstream: member,
				Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Status: a.Status, Bytes: a.Bytes,
				Duration: a.Duration, Retries: a.Try - 1, Referer: r.Referer(), UserAgent: r.UserAgent(), Err: a.Err})
		}
	}
}

// proxyHandler builds the proxy of one pool for listener l.
func proxyHandler(e env, l *config.Listener, ps *poolState) (*proxy.HTTP, error) {
	h := l.HTTP
	tp, err := trusted(h.TrustedProxies)
	if err != nil {
		return nil, err
	}
	cfg := proxy.HTTPConfig{
		Pool: ps.pool, Key: ps.cfg.Key, MaxIdleConns: h.MaxIdleConns, IdleTimeout: h.Timeouts.Idle,
		DialTimeout: h.Timeouts.Connect, ResponseHeaderTimeout: h.Timeouts.ResponseHeader, RequestTimeout: h.Timeouts.Request,
		MaxTries: h.MaxTries, RetryTimeout: h.RetryTimeout, RetryStatuses: h.RetryStatuses, RetryBufferBytes: h.RetryBufferBytes,
		MaxConns: h.MaxConns, MaxQueue: h.MaxQueue, QueueTimeout: h.QueueTimeout, TrustedProxies: tp, Via: h.Via,
		OnAttempt: recorder(e, l.Name, ps.cfg.Name), Logger: e.log.With("listener", l.Name),
	}
	if c := h.Sticky; c != nil {
		cfg.StickyCookie, cfg.CookieKey, cfg.CookieMaxAge, cfg.CookieSecure = cookieName(c.Name), c.Key, c.MaxAge, c.Secure
	}
	if b := h.RetryBudget; b != nil {
		cfg.Circuit.Pool.RetryBudget = circuit.RetryBudget{Percent: b.Percent, MinConcurrency: b.MinConcurrency}
	}
	if c := h.Circuit; c != nil {
		cfg.Circuit.Pool.MaxRequests, cfg.Circuit.Pool.MaxRetries, cfg.Circuit.Member.MaxRequests = c.MaxRequests, c.MaxRetries, c.MemberMaxRequests
	}
	hp, err := proxy.NewHTTP(cfg)
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	return hp, nil
}

func cookieName(n string) string {
	if n == "" {
		return "lbkit_backend"
	}
	return n
}

// route is one entry of an HTTP listener's routing table.
type route struct {
	host, prefix string // host "" matches any; "*.x" any subdomain of x
	h            *proxy.HTTP
}

// router sends each request to the route with the most specific host and
// the longest path prefix, else to the default pool's proxy.
type router struct {
	routes []route // sorted: exact hosts, wildcard hosts, any host; longer prefixes first
	def    *proxy.HTTP
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	for _, ro := range rt.routes {
		if ro.host != "" {
			if strings.HasPrefix(ro.host, "*.") {
				if !strings.HasSuffix(host, ro.host[1:]) {
					continue
				}
			} else if ro.host != host {
				continue
			}
		}
		if strings.HasPrefix(r.URL.Path, ro.prefix) {
			ro.h.ServeHTTP(w, r)
			return
		}
	}
	if rt.def == nil {
		http.Error(w, "no route", http.StatusNotFound)
		return
	}
	rt.def.ServeHTTP(w, r)
}

func hostRank(h string) int {
	switch {
	case h == "":
		return 2
	case strings.HasPrefix(h, "*."):
		return 1
	}
	return 0
}

func buildHTTP(e env) func(l *config.Listener, pools map[string]*poolState) (built, error) {
	return func(l *config.Listener, pools map[string]*poolState) (built, error) {
		h := l.HTTP
		var handlers []*proxy.HTTP
		cleanup := func() {
			for _, hp := range handlers {
				hp.Close()
			}
		}
		byPool := make(map[string]*proxy.HTTP)
		get := func(name string) (*proxy.HTTP, error) {
			if hp := byPool[name]; hp != nil {
				return hp, nil
			}
			ps, err := pool(l, pools, name)
			if err != nil {
				return nil, err
			}
			hp, err := proxyHandler(e, l, ps)
			if err != nil {
				return nil, err
			}
			byPool[name] = hp
			handlers = append(handlers, hp)
			return hp, nil
		}
		fail := func(err error) (built, error) {
			cleanup()
			return built{}, err
		}
		var def *proxy.HTTP
		if h.Pool != "" {
			var err error
			if def, err = get(h.Pool); err != nil {
				return fail(err)
			}
		}
		readTO, idleTO := h.Timeouts.ClientRead, h.Timeouts.ClientIdle
		store, err := certStore(e, l, h.TLS)
		if err != nil {
			return fail(err)
		}
		if store != nil {
			prev := cleanup
			cleanup = func() { prev(); store.Close() }
		}
		if len(h.Routes) == 0 && (h.TLS == nil || !h.TLS.HTTP2) {
			// The fast path: the raw HTTP/1.1 front-end (over TLS when
			// the listener terminates it).
			srv, err := proxy.NewServer(proxy.ServerConfig{Handler: def, ReadTimeout: readTO, IdleTimeout: idleTO, Logger: e.log.With("listener", l.Name)})
			if err != nil {
				return fail(err)
			}
			return built{withTLS(srv, store), cleanup}, nil
		}
		rt := &router{def: def}
		for _, ro := range h.Routes {
			hp, err := get(ro.Pool)
			if err != nil {
				return fail(err)
			}
			prefix := ro.PathPrefix
			if prefix == "" {
				prefix = "/"
			}
			rt.routes = append(rt.routes, route{host: strings.ToLower(ro.Host), prefix: prefix, h: hp})
		}
		sort.SliceStable(rt.routes, func(i, j int) bool {
			a, b := rt.routes[i], rt.routes[j]
			if hostRank(a.host) != hostRank(b.host) {
				return hostRank(a.host) < hostRank(b.host)
			}
			return len(a.prefix) > len(b.prefix)
		})
		return built{stdServer(rt, store, readTO, idleTO), cleanup}, nil
	}
}

// certStore loads a listener's certificate, watched for changes, or
// returns nil when the listener does not terminate TLS.
func certStore(e env, l *config.Listener, t *config.TLS) (*certs.Store, error) {
	if t == nil {
		return nil, nil
	}
	st, err := certs.New(certs.Config{
		Pairs: []certs.Pair{{CertFile: e.path(t.CertFile), KeyFile: e.path(t.KeyFile)}},
		Watch: true, Logger: e.log.With("listener", l.Name),
	})
	if err != nil {
		return nil, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
	}
	return st, nil
}

// tlsServer serves a raw HTTP/1.1 front-end over TLS: HTTP/1.1 is the
// only protocol it offers (ALPN).
type tlsServer struct {
	netServer
	cfg *tls.Config
}

func withTLS(s netServer, st *certs.Store) netServer {
	if st == nil {
		return s
	}
	return tlsServer{s, st.ConfigALPN("http/1.1")}
}

func (t tlsServer) Serve(ctx context.Context, ln net.Listener) error {
	return t.netServer.Serve(ctx, tls.NewListener(ln, t.cfg))
}

// stdServer adapts a net/http server (routing, HTTP/2 over TLS) to the
// lifecycle of lbkit's servers.
type stdHTTP struct {
	srv *http.Server
	tls bool
}

func stdServer(h http.Handler, st *certs.Store, readTO, idleTO time.Duration) *stdHTTP {
	if readTO == 0 {
		readTO = 10 * time.Second
	}
	if idleTO == 0 {
		idleTO = 2 * time.Minute
	}
	s := &stdHTTP{srv: &http.Server{Handler: h, ReadHeaderTimeout: readTO, IdleTimeout: idleTO}}
	if st != nil {
		s.tls = true
		s.srv.TLSConfig = st.Config() // ALPN h2 and http/1.1
	}
	return s
}

func (s *stdHTTP) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { s.srv.Close() })
	defer stop()
	var err error
	if s.tls {
		err = s.srv.ServeTLS(ln, "", "")
	} else {
		err = s.srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *stdHTTP) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
func (s *stdHTTP) Close() error                       { return s.srv.Close() }

// ---- redirect ----

func buildRedirect(e env) func(l *config.Listener, pools map[string]*poolState) (built, error) {
	return func(l *config.Listener, pools map[string]*poolState) (built, error) {
		r := l.Redirect
		ps, err := pool(l, pools, r.Pool)
		if err != nil {
			return built{}, err
		}
		tp, err := trusted(r.TrustedProxies)
		if err != nil {
			return built{}, err
		}
		cfg := redirect.Config{
			Pool: ps.pool, Key: ps.cfg.Key, Code: r.Code, MaxAge: r.MaxAge, DuplicateLinks: r.DuplicateLinks,
			FallbackURL: r.FallbackURL, RetryAfter: r.RetryAfter, TrustedProxies: tp, Logger: e.log.With("listener", l.Name),
		}
		if c := r.Cookie; c != nil {
			cfg.StickyCookie, cfg.CookieKey, cfg.CookieMaxAge, cfg.CookieSecure = cookieName(c.Name), c.Key, c.MaxAge, c.Secure
		}
		for _, z := range r.Zones {
			p, err := config.ParsePrefix(z.Prefix)
			if err != nil {
				return built{}, err
			}
			cfg.Zones = append(cfg.Zones, redirect.ZoneRule{Prefix: p, Zone: z.Zone})
		}
		h, err := redirect.New(cfg)
		if err != nil {
			return built{}, fmt.Errorf("daemon: listener %s: %w", l.Name, err)
		}
		store, err := certStore(e, l, r.TLS)
		if err != nil {
			return built{}, err
		}
		cleanup := func() {
			if store != nil {
				store.Close()
			}
		}
		if e.access == nil && (r.TLS == nil || !r.TLS.HTTP2) {
			srv, err := redirect.NewServer(redirect.ServerConfig{Handler: h, Logger: e.log.With("listener", l.Name)})
			if err != nil {
				cleanup()
				return built{}, err
			}
			return built{withTLS(srv, store), cleanup}, nil
		}
		// With an access log (or HTTP/2) the handler runs under net/http,
		// where each answer can be observed.
		return built{stdServer(redirectLogger{e: e, listener: l.Name, pool: ps.cfg.Name, h: h}, store, 0, 0), cleanup}, nil
	}
}

// redirectLogger logs and counts each redirect.
type redirectLogger struct {
	e              env
	listener, pool string
	h              http.Handler
}

type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (rl redirectLogger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	rl.h.ServeHTTP(sw, r)
	d := time.Since(start)
	loc := w.Header().Get("Location")
	member := ""
	if u, err := url.Parse(loc); err == nil {
		member = u.Host // the target, without the per-request path
	}
	rl.e.metrics.Record(Outcome{Listener: rl.listener, Pool: rl.pool, Member: member, Code: sw.status, Elapsed: d, Bytes: sw.bytes})
	if rl.e.access != nil {
		rl.e.access.Log(Entry{Time: start, Client: r.RemoteAddr, Listener: rl.listener, Pool: rl.pool, Upstream: loc,
			Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Status: sw.status, Bytes: sw.bytes, Duration: d,
			Referer: r.Referer(), UserAgent: r.UserAgent()})
	}
}
