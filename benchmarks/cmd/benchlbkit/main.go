// Command benchlbkit runs lbkit's raw HTTP front-ends for the side-by-side
// benchmarks (benchmarks/frontend_test.go) in their own process:
// proxy.Server over a round-robin pool of -backends, or, with -redirect,
// redirect.Server answering 302 to one of them; with -goroutines on a
// listener that is not a *net.TCPListener, which selects the servers'
// portable goroutine-per-connection path. It runs until its
// standard input closes. With -cpuprofile it writes a CPU profile.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxy"
	"github.com/lbkit/lbkit/redirect"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	backends := flag.String("backends", "", "comma-separated backend addresses")
	redir := flag.Bool("redirect", false, "serve redirect.Server instead of proxy.Server")
	profile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	goroutines := flag.Bool("goroutines", false, "hide the listener's type: the servers' portable path, a goroutine per connection")
	flag.Parse()
	if err := run(*listen, *backends, *redir, *goroutines, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "benchlbkit:", err)
		os.Exit(1)
	}
}

// plainListener hides a *net.TCPListener's type.
type plainListener struct{ net.Listener }

func run(listen, backends string, redir, goroutines bool, profile string) error {
	log := slog.New(slog.DiscardHandler)
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	defer pool.Close()
	var bs []balancer.Backend
	for a := range strings.SplitSeq(backends, ",") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return err
		}
		bs = append(bs, balancer.Backend{Addr: ap})
	}
	if err := pool.Set(bs); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	if goroutines {
		ln = plainListener{ln}
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
		cancel()
	}()
	if redir {
		h, err := redirect.New(redirect.Config{Pool: pool, Logger: log})
		if err != nil {
			return err
		}
		srv, err := redirect.NewServer(redirect.ServerConfig{Handler: h, Logger: log})
		if err != nil {
			return err
		}
		return srv.Serve(ctx, ln)
	}
	p, err := proxy.NewHTTP(proxy.HTTPConfig{Pool: pool, Logger: log})
	if err != nil {
		return err
	}
	defer p.Close()
	srv, err := proxy.NewServer(proxy.ServerConfig{Handler: p, Logger: log})
	if err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}
