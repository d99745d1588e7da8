package benchmarks

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/internal/certs"
	"github.com/lbkit/lbkit/internal/certs/certstest"
	"github.com/lbkit/lbkit/proxy"
)

// The TLS benchmark puts lbkit, nginx and HAProxy, each terminating TLS
// with the same ECDSA P-256 certificate (made by the benchmark), in front
// of the same three backends (a child process answering 100 bytes), each
// proxy in its own process, and measures at 100 connections:
//
//   - hs-full: TLS handshakes/s, one request per connection
//     (Connection: close), TLS 1.3, X25519, no resumption;
//   - hs-resume: the same with session tickets (TLS 1.3 PSK with ECDHE);
//   - keepalive: requests/s over kept-alive TLS connections (wrk when
//     installed, else the Go client).
//
// The handshake load is a Go client in its own process (the test binary
// again), so its CPU is not the proxies'; it offers only X25519, as
// OpenSSL 3.0 clients do, so no peer does a post-quantum key exchange.
// Rounds are interleaved (each peer once per round, in turn) and the
// median of three with its range is reported, with CPU per request from
// /proc. lbkit runs twice: proxy.Server on a TLS listener
// ("lbkit-server", HTTP/1.1) and proxy.HTTP under net/http
// ("lbkit-nethttp", h2 and HTTP/1.1).
//
//	go test ./benchmarks -run '^$' -bench BenchmarkTLS -benchtime=1x
//
// BenchmarkTLSHandshakeGo measures a bare crypto/tls handshake in one
// process (client and server on a pipe) and BenchmarkTLSPrimitives the
// server's public-key work in it, to compare with `openssl speed ecdsap256
// ecdhx25519`.

const (
	tlsChildEnv = "LBKIT_BENCH_TLS_CHILD"
	tlsRounds   = 3
	tlsConns    = 100
	tlsWarmup   = 2 * time.Second
	tlsDuration = 3 * time.Second
	tlsBodySize = 100
)

func init() {
	if kind := os.Getenv(tlsChildEnv); kind != "" {
		os.Exit(tlsChildMain(kind, os.Args[len(os.Args)-4:]))
	}
}

// tlsChildMain runs one child: "backend" (args: three listen addresses),
// "lbkit-server" or "lbkit-nethttp" (args: listen, backends, cert, key)
// or "load" (args: address, mode, connections, duration); servers run
// until stdin closes.
func tlsChildMain(kind string, args []string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	switch kind {
	case "backend":
		body := []byte(strings.Repeat("b", tlsBodySize-1) + "\n")
		for _, a := range strings.Split(args[3], ",") {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return fail(err)
			}
			go (&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = []string{"text/plain"}
				w.Write(body)
			})}).Serve(ln)
		}
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "lbkit-server", "lbkit-nethttp":
		listen, backs, cf, kf := args[0], strings.Split(args[1], ","), args[2], args[3]
		pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
		var bs []balancer.Backend
		for _, a := range backs {
			bs = append(bs, balancer.Backend{Addr: netip.MustParseAddrPort(a)})
		}
		if err := pool.Set(bs); err != nil {
			return fail(err)
		}
		h, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return fail(err)
		}
		st, err := certs.New(certs.Config{Pairs: []certs.Pair{{CertFile: cf, KeyFile: kf}}})
		if err != nil {
			return fail(err)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fail(err)
		}
		if kind == "lbkit-server" {
			srv, err := proxy.NewServer(proxy.ServerConfig{Handler: h, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				return fail(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
			srv.Serve(ctx, tls.NewListener(ln, st.ConfigALPN("http/1.1")))
			return 0
		}
		srv := &http.Server{Handler: h, TLSConfig: st.Config(), ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout: 2 * time.Minute, ErrorLog: log.New(io.Discard, "", 0)}
		go srv.ServeTLS(ln, "", "")
		io.Copy(io.Discard, os.Stdin)
		srv.Close()
		return 0
	case "load":
		conns, _ := strconv.Atoi(args[2])
		d, _ := time.ParseDuration(args[3])
		r, resumed := tlsGoLoad(args[0], args[1], conns, d)
		fmt.Printf("%d %d %f %f %d\n", int64(r.requests), int64(r.errors), r.p50, r.p99, resumed)
		return 0
	}
	return fail(fmt.Errorf("unknown child %q", kind))
}

// tlsGoLoad runs conns clients against addr for d. Mode "hs-full" and
// "hs-resume" make one request per TLS connection, without and with a
// session cache; "keepalive" makes them all on one connection per client.
// It also returns how many connections resumed a session.
func tlsGoLoad(addr, mode string, conns int, d time.Duration) (pxResult, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var lats []time.Duration
	var errs, resumed atomic.Int64
	req := []byte("GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
	if mode == "keepalive" {
		req = []byte("GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
	}
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			cfg := &tls.Config{ServerName: "bench.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
				CurvePreferences: []tls.CurveID{tls.X25519}, NextProtos: []string{"http/1.1"}}
			if mode == "hs-resume" {
				cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			}
			var local []time.Duration
			defer func() { mu.Lock(); lats = append(lats, local...); mu.Unlock() }()
			var c *tls.Conn
			var br *bufio.Reader
			for ctx.Err() == nil {
				t0 := time.Now()
				if c == nil {
					nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						errs.Add(1)
						continue
					}
					c = tls.Client(nc, cfg)
					br = bufio.NewReader(c)
				}
				c.SetDeadline(t0.Add(5 * time.Second))
				_, err := c.Write(req)
				var resp *http.Response
				if err == nil {
					resp, err = http.ReadResponse(br, nil)
				}
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					errs.Add(1)
					c.Close()
					c = nil
					continue
				}
				local = append(local, time.Since(t0))
				if c.ConnectionState().DidResume {
					resumed.Add(1)
				}
				if mode != "keepalive" {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		})
	}
	wg.Wait()
	if len(lats) == 0 {
		return pxResult{errors: float64(errs.Load())}, 0
	}
	slices.Sort(lats)
	ms := func(q float64) float64 { return float64(lats[int(q*float64(len(lats)-1))]) / 1e6 }
	return pxResult{rps: float64(len(lats)) / d.Seconds(), p50: ms(0.5), p99: ms(0.99), requests: float64(len(lats)), errors: float64(errs.Load())}, resumed.Load()
}

// tlsLoad runs a load of mode against addr in a child process (wrk for
// keep-alive when installed).
func tlsLoad(addr, mode string, d time.Duration) (pxResult, error) {
	if mode == "keepalive" {
		if _, err := os.Stat(pxWrk); err == nil {
			out, err := exec.Command(pxWrk, "-t2", "-c"+strconv.Itoa(tlsConns), "-d"+strconv.Itoa(int(d/time.Second))+"s",
				"--timeout", "5s", "--latency", "https://"+addr+"/").CombinedOutput()
			if err != nil {
				return pxResult{}, fmt.Errorf("wrk: %v: %s", err, out)
			}
			return tlsParseWrk(string(out))
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", addr, mode, strconv.Itoa(tlsConns), d.String())
	cmd.Env = append(os.Environ(), tlsChildEnv+"=load")
	out, err := cmd.Output()
	if err != nil {
		return pxResult{}, fmt.Errorf("load: %v: %s", err, out)
	}
	var n, e, resumed int64
	var r pxResult
	if _, err := fmt.Sscan(string(out), &n, &e, &r.p50, &r.p99, &resumed); err != nil {
		return r, fmt.Errorf("load: %q: %v", out, err)
	}
	r.requests, r.errors, r.rps = float64(n), float64(e), float64(n)/d.Seconds()
	switch {
	case n == 0:
		return r, fmt.Errorf("load: no request completed (%d errors)", e)
	case mode == "hs-full" && resumed > 0:
		return r, fmt.Errorf("load: %d of %d connections resumed without a session cache", resumed, n)
	case mode == "hs-resume" && resumed < (n-tlsConns)*9/10:
		// Each client's first connection cannot resume.
		return r, fmt.Errorf("load: only %d of %d connections resumed", resumed, n)
	}
	return r, nil
}

// tlsParseWrk reads wrk's report.
func tlsParseWrk(s string) (pxResult, error) {
	var r pxResult
	if m := pxReqs.FindStringSubmatch(s); m != nil {
		r.requests, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := pxRPS.FindStringSubmatch(s); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, re := range []*regexp.Regexp{pxSock, pxNon2xx} {
		if m := re.FindStringSubmatch(s); m != nil {
			for _, v := range m[1:] {
				n, _ := strconv.ParseFloat(v, 64)
				r.errors += n
			}
		}
	}
	for _, m := range pxLat.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "99" {
			r.p99 = v
		} else {
			r.p50 = v
		}
	}
	if r.rps == 0 || r.requests == 0 {
		return r, fmt.Errorf("wrk: no result in %q", s)
	}
	return r, nil
}

// tlsChild starts a child of kind with args and returns its PID; it is
// stopped (stdin closed) at cleanup.
func tlsChild(b *testing.B, kind, addr string, args ...string) int {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), tlsChildEnv+"="+kind)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	return pxStart(b, cmd, addr, func(*exec.Cmd) { stdin.Close() })
}

func tlsStartNginx(b *testing.B, backs []string, cf, kf string) (string, int) {
	dir, addr := b.TempDir(), pxFreeAddr(b)
	var servers strings.Builder
	for _, a := range backs {
		fmt.Fprintf(&servers, "    server %s;\n", a)
	}
	conf := fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  upstream be {
%[2]s    keepalive 512;
  }
  server {
    listen %[3]s ssl;
    ssl_certificate %[4]s;
    ssl_certificate_key %[5]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, dir, servers.String(), addr, cf, kf)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(pxNginx, "-c", cfg, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	return addr, pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
}

func tlsStartHAProxy(b *testing.B, backs []string, cf, kf string) (string, int) {
	dir, addr := b.TempDir(), pxFreeAddr(b)
	// HAProxy reads the certificate and its key from one file.
	crt, err := os.ReadFile(cf)
	if err != nil {
		b.Fatal(err)
	}
	key, err := os.ReadFile(kf)
	if err != nil {
		b.Fatal(err)
	}
	both := filepath.Join(dir, "site.pem")
	if err := os.WriteFile(both, append(crt, key...), 0o600); err != nil {
		b.Fatal(err)
	}
	var servers strings.Builder
	for i, a := range backs {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, a)
	}
	conf := fmt.Sprintf(`global
  maxconn 9000
  nbthread 2
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind %s ssl crt %s alpn http/1.1
  default_backend be
backend be
  balance roundrobin
%s`, addr, both, servers.String())
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(pxHAProxy, "-f", cfg, "-db")
	return addr, pxStart(b, cmd, addr, func(c *exec.Cmd) { c.Process.Signal(os.Interrupt) })
}

type tlsRun struct {
	res pxResult
	cpu float64 // µs per request
}

// BenchmarkTLS compares TLS termination by lbkit, nginx and HAProxy; see
// the comment at the top of this file.
func BenchmarkTLS(b *testing.B) {
	_, errN := os.Stat(pxNginx)
	_, errH := os.Stat(pxHAProxy)
	_, errW := os.Stat(pxWrk)
	if (errN != nil || errH != nil || errW != nil) && os.Getenv("CI") == "" {
		b.Skip("nginx, haproxy or wrk not installed (Debian packages nginx-light, haproxy, wrk)")
	}
	ca := certstest.NewCA(b)
	cf, kf, _ := ca.Issue(b, b.TempDir(), "site", "bench.test")
	backs := []string{pxFreeAddr(b), pxFreeAddr(b), pxFreeAddr(b)}
	tlsChild(b, "backend", backs[2], "", "", "", strings.Join(backs, ","))

	type peer struct {
		name      string
		addr      string
		pid       int
		available bool
	}
	var peers []*peer
	for _, kind := range []string{"lbkit-server", "lbkit-nethttp"} {
		addr := pxFreeAddr(b)
		pid := tlsChild(b, kind, addr, addr, strings.Join(backs, ","), cf, kf)
		peers = append(peers, &peer{kind, addr, pid, true})
	}
	if errN == nil {
		addr, pid := tlsStartNginx(b, backs, cf, kf)
		peers = append(peers, &peer{"nginx", addr, pid, true})
	}
	if errH == nil {
		addr, pid := tlsStartHAProxy(b, backs, cf, kf)
		peers = append(peers, &peer{"haproxy", addr, pid, true})
	}

	modes := []string{"hs-full", "hs-resume", "keepalive"}
	runs := map[string]map[string][]tlsRun{} // mode -> peer -> rounds
	for _, m := range modes {
		runs[m] = map[string][]tlsRun{}
	}
	for round := range tlsRounds {
		for _, m := range modes {
			for _, p := range peers {
				if _, err := tlsLoad(p.addr, m, tlsWarmup); err != nil {
					// A warm-up may starve on a loaded machine; the run counts.
					b.Logf("round %d %s %s warm-up: %v", round, m, p.name, err)
				}
				cpu0 := pxCPU(p.pid)
				res, err := tlsLoad(p.addr, m, tlsDuration)
				if err != nil {
					b.Fatalf("round %d %s %s: %v", round, m, p.name, err)
				}
				cpu := pxCPU(p.pid) - cpu0
				runs[m][p.name] = append(runs[m][p.name], tlsRun{res, cpu / res.requests * 1e6})
			}
		}
	}
	for b.Loop() {
		// One fixed set of rounds per benchmark: run with -benchtime=1x.
	}
	b.ReportMetric(0, "ns/op")
	var table strings.Builder
	fmt.Fprintf(&table, "\n%-10s %-14s %22s %18s %8s %8s %10s %10s\n", "mode", "peer", "req/s median (range)", "cpu-us/req (range)", "p99-ms", "errors", "server-x", "nethttp-x")
	for _, m := range modes {
		med := map[string]tlsRun{}
		for _, p := range peers {
			rs := slices.Clone(runs[m][p.name])
			slices.SortFunc(rs, func(x, y tlsRun) int { return int(x.res.rps - y.res.rps) })
			med[p.name] = rs[len(rs)/2]
		}
		for _, p := range peers {
			rs := runs[m][p.name]
			md := med[p.name]
			lo, hi := rs[0].res.rps, rs[0].res.rps
			clo, chi := rs[0].cpu, rs[0].cpu
			var errs float64
			for _, r := range rs {
				lo, hi = min(lo, r.res.rps), max(hi, r.res.rps)
				clo, chi = min(clo, r.cpu), max(chi, r.cpu)
				errs += r.res.errors
			}
			ratio := func(ours string) string {
				o, ok := med[ours]
				if !ok || ours == p.name || strings.HasPrefix(p.name, "lbkit") {
					return "-"
				}
				return fmt.Sprintf("%.2f/%.2f", o.res.rps/md.res.rps, o.cpu/md.cpu)
			}
			fmt.Fprintf(&table, "%-10s %-14s %8.0f (%6.0f-%6.0f) %6.0f (%4.0f-%4.0f) %8.2f %8.0f %10s %10s\n",
				m, p.name, md.res.rps, lo, hi, md.cpu, clo, chi, md.res.p99, errs, ratio("lbkit-server"), ratio("lbkit-nethttp"))
			b.ReportMetric(md.res.rps, m+"/"+p.name+"-req/s")
			b.ReportMetric(md.cpu, m+"/"+p.name+"-cpu-us/req")
		}
	}
	// Printed, not logged: the testing package cuts a benchmark's log.
	fmt.Println(table.String() + "server-x and nethttp-x: lbkit's median req/s / the peer's, then CPU per request / the peer's")
}

// BenchmarkTLSHandshakeGo measures one whole crypto/tls handshake (client
// and server, TLS 1.3, ECDSA P-256, X25519) over an in-memory pipe, full
// and resumed; cpu-us/op is what the process spent.
func BenchmarkTLSHandshakeGo(b *testing.B) {
	ca := certstest.NewCA(b)
	cf, kf, _ := ca.Issue(b, b.TempDir(), "site", "bench.test")
	st, err := certs.New(certs.Config{Pairs: []certs.Pair{{CertFile: cf, KeyFile: kf}}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for _, resume := range []bool{false, true} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			ccfg := &tls.Config{RootCAs: ca.Pool, ServerName: "bench.test", CurvePreferences: []tls.CurveID{tls.X25519}}
			if resume {
				ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				tlsPipeHandshake(b, st.Config(), ccfg)
			}
			b.ReportAllocs()
			cpu0 := tlsSelfCPU()
			for b.Loop() {
				if r := tlsPipeHandshake(b, st.Config(), ccfg); r != resume {
					b.Fatalf("resumed %v, want %v", r, resume)
				}
			}
			b.ReportMetric(float64(tlsSelfCPU()-cpu0)/float64(b.N)/1e3, "cpu-us/op")
		})
	}
}

func tlsPipeHandshake(b *testing.B, cfg, ccfg *tls.Config) bool {
	a, c := net.Pipe()
	defer a.Close()
	defer c.Close()
	srv, cli := tls.Server(a, cfg), tls.Client(c, ccfg)
	errc := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			_, err = srv.Write([]byte("x"))
		}
		errc <- err
	}()
	err := cli.Handshake()
	if err == nil {
		_, err = cli.Read(make([]byte, 1))
	}
	if err2 := <-errc; err == nil {
		err = err2
	}
	if err != nil {
		b.Fatal(err)
	}
	return cli.ConnectionState().DidResume
}

// BenchmarkTLSPrimitives measures the public-key operations a server does
// in a full TLS 1.3 handshake with an ECDSA P-256 certificate and X25519:
// one ECDSA signature and one X25519 key generation plus shared secret.
// Compare with `openssl speed -seconds 3 ecdsap256 ecdhx25519`.
func BenchmarkTLSPrimitives(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("transcript"))
	b.Run("ecdsa-p256-sign", func(b *testing.B) {
		cpu0 := tlsSelfCPU()
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(tlsSelfCPU()-cpu0)/float64(b.N)/1e3, "cpu-us/op")
	})
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	b.Run("x25519-ecdh", func(b *testing.B) {
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		cpu0 := tlsSelfCPU()
		for b.Loop() {
			if _, err := k.ECDH(peer.PublicKey()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(tlsSelfCPU()-cpu0)/float64(b.N)/1e3, "cpu-us/op")
	})
	b.Run("x25519-keygen", func(b *testing.B) {
		cpu0 := tlsSelfCPU()
		for b.Loop() {
			ecdh.X25519().GenerateKey(rand.Reader)
		}
		b.ReportMetric(float64(tlsSelfCPU()-cpu0)/float64(b.N)/1e3, "cpu-us/op")
	})
}

// tlsSelfCPU returns the process's user+system CPU time: on a shared
// machine the time per operation that matters, as openssl speed reports.
func tlsSelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
