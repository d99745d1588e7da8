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
	"time"

	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/config"
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
// server and switching the socket's acceptor to it (see acceptor): the
// socket and the old server's connections are kept, and no connection is
// refused.
type swapServer struct {
	name  string
	log   *slog.Logger
	acc   *acceptor
	build func(l *config.Listener, pools map[string]*poolState) (built, error)
	drain time.Duration

	mu     sync.Mutex
	cur    built
	curV   *vlistener
	runs   sync.WaitGroup // Serve calls of every server, current and retired
	olds   sync.WaitGroup // retired servers draining
	done   chan struct{}
	close1 sync.Once
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
	acc, v := newAcceptor(ln, log)
	s := &swapServer{name: l.Name, log: log, acc: acc, build: build, drain: config.DefaultShutdownTimeout, cur: b, curV: v, done: done}
	s.serve(b, v)
	return s, nil
}

func (s *swapServer) serve(b built, v *vlistener) {
	s.runs.Add(1)
	go func() {
		defer s.runs.Done()
		if err := b.srv.Serve(context.Background(), v); err != nil {
			s.log.Error("daemon: listener stopped", "err", err)
		}
	}()
}

func (s *swapServer) update(l *config.Listener, pools map[string]*poolState) error {
	b, err := s.build(l, pools)
	if err != nil {
		return err
	}
	v := s.acc.newVirtual()
	s.mu.Lock()
	old, oldV := s.cur, s.curV
	s.cur, s.curV = b, v
	s.mu.Unlock()
	s.serve(b, v)
	s.acc.switchTo(v)
	oldV.Close()
	s.olds.Add(1)
	go func() {
		defer s.olds.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.drain)
		defer cancel()
		if err := old.srv.Shutdown(ctx); err != nil {
			old.srv.Close()
		}
		old.cleanup()
	}()
	return nil
}

func (s *swapServer) shutdown(ctx context.Context) error {
	s.mu.Lock()
	cur, v := s.cur, s.curV
	s.mu.Unlock()
	v.Close()
	err := cur.srv.Shutdown(ctx)
	if err != nil {
		cur.srv.Close()
	}
	s.finish(cur)
	return err
}

func (s *swapServer) close() error {
	s.mu.Lock()
	cur, v := s.cur, s.curV
	s.mu.Unlock()
	v.Close()
	err := cur.srv.Close()
	s.finish(cur)
	return err
}

func (s *swapServer) finish(cur built) {
	s.close1.Do(func() {
		s.acc.close()
		s.olds.Wait()
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
		if len(h.Routes) == 0 && h.TLS == nil {
			// The fast path: the raw HTTP/1.1 front-end.
			srv, err := proxy.NewServer(proxy.ServerConfig{Handler: def, ReadTimeout: readTO, IdleTimeout: idleTO, Logger: e.log.With("listener", l.Name)})
			if err != nil {
				return fail(err)
			}
			return built{srv, cleanup}, nil
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
		hs, err := stdServer(rt, h.TLS, readTO, idleTO)
		if err != nil {
			return fail(err)
		}
		return built{hs, cleanup}, nil
	}
}

// stdServer adapts a net/http server (routing, TLS) to the lifecycle of
// lbkit's servers.
type stdHTTP struct {
	srv *http.Server
	tls *tls.Config
}

func stdServer(h http.Handler, t *config.TLS, readTO, idleTO time.Duration) (*stdHTTP, error) {
	if readTO == 0 {
		readTO = 10 * time.Second
	}
	if idleTO == 0 {
		idleTO = 2 * time.Minute
	}
	s := &stdHTTP{srv: &http.Server{Handler: h, ReadHeaderTimeout: readTO, IdleTimeout: idleTO}}
	if t != nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("daemon: tls: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		s.srv.TLSConfig = s.tls
	}
	return s, nil
}

func (s *stdHTTP) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { s.srv.Close() })
	defer stop()
	var err error
	if s.tls != nil {
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
		if e.access == nil && r.TLS == nil {
			srv, err := redirect.NewServer(redirect.ServerConfig{Handler: h, Logger: e.log.With("listener", l.Name)})
			if err != nil {
				return built{}, err
			}
			return built{srv, func() {}}, nil
		}
		// With an access log (or TLS) the handler runs under net/http,
		// where each answer can be observed.
		hs, err := stdServer(redirectLogger{e: e, listener: l.Name, pool: ps.cfg.Name, h: h}, r.TLS, 0, 0)
		if err != nil {
			return built{}, err
		}
		return built{hs, func() {}}, nil
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
