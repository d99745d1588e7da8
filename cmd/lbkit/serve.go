package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/daemon"
)

//go:embed serve_default.yaml
var defaultConfig []byte

// serveMain runs `lbkit serve`: the load balancer from a configuration
// file, until SIGTERM or SIGINT (graceful stop), reloading on SIGHUP and on
// changes to the file, reopening the access log on SIGUSR1.
func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "configuration `file` (default: the embedded default, which also starts built-in backends)")
	admin := fs.String("admin", "", "admin endpoint `address`, replacing the file's (\"off\" disables it)")
	backends := fs.Int("backends", -1, "start `N` built-in HTTP backends on 127.0.0.1:9101..; default 3 with the embedded configuration, 0 otherwise")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	watch := fs.Bool("watch", true, "reload when the configuration file changes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(stderr, "lbkit serve: -log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var cfg *config.Config
	var err error
	if *file == "" {
		cfg, err = config.Parse("(embedded default)", defaultConfig)
		if *backends < 0 {
			*backends = 3
		}
	} else {
		cfg, err = config.Load(*file)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *backends > 0 {
		stop, err := startBuiltinBackends(*backends, log)
		if err != nil {
			fmt.Fprintln(stderr, "lbkit serve:", err)
			return 1
		}
		defer stop()
	}

	d := daemon.New(daemon.Options{ConfigFile: *file, AdminAddr: *admin, Logger: log})
	if err := d.Start(cfg); err != nil {
		fmt.Fprintln(stderr, "lbkit serve:", err)
		return 1
	}
	fmt.Fprintf(stdout, "lbkit serve: running revision 1 (admin %s); SIGHUP reloads, SIGTERM stops\n", orOff(d.AdminAddr()))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	wctx, cancelWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if *watch && *file != "" {
			if err := d.WatchFile(wctx); err != nil {
				log.Warn("lbkit serve: not watching the configuration file", "err", err)
			}
		}
	}()
	defer func() {
		cancelWatch()
		<-watchDone
	}()
	for {
		select {
		case <-ctx.Done():
			return shutdown(d, cfg, log)
		case s := <-sigs:
			switch s {
			case syscall.SIGHUP:
				_ = d.Reload("signal")
			case syscall.SIGUSR1:
				if err := d.ReopenLogs(); err != nil {
					log.Error("lbkit serve: reopening the access log", "err", err)
				}
			default:
				return shutdown(d, cfg, log)
			}
		}
	}
}

// shutdown drains for up to the configured timeout and exits 0.
func shutdown(d *daemon.Daemon, cfg *config.Config, log *slog.Logger) int {
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = config.DefaultShutdownTimeout
	}
	log.Info("lbkit serve: stopping; draining", "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("lbkit serve: shutdown", "err", err)
	}
	log.Info("lbkit serve: stopped")
	return 0
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

// startBuiltinBackends starts n HTTP backends on 127.0.0.1:9101 and up,
// answering "backend N" and /healthz, for the embedded configuration.
func startBuiltinBackends(n int, log *slog.Logger) (stop func(), err error) {
	var srvs []*http.Server
	stop = func() {
		for _, s := range srvs {
			s.Close()
		}
	}
	for i := range n {
		addr := "127.0.0.1:" + strconv.Itoa(9101+i)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			stop()
			return nil, fmt.Errorf("built-in backend: %w (is another lbkit serve running? use -backends 0)", err)
		}
		name := "backend " + strconv.Itoa(i+1) + " (" + addr + ")"
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s served %s\n", name, r.URL.Path)
		})
		s := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		srvs = append(srvs, s)
		go func() { _ = s.Serve(ln) }()
		log.Info("lbkit serve: built-in backend", "addr", addr)
	}
	return stop, nil
}
