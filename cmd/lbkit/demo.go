package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// demoConfig holds the demo's flags.
type demoConfig struct {
	backends    int
	requests    int
	concurrency int
	timeout     time.Duration
	killBackend bool
	only        string
	progress    bool
	verbose     bool
	model       capacity // the backends' capacity model (-backend and overrides)
}

func demoMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg demoConfig
	fs := flag.NewFlagSet("lbkit demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.backends, "backends", 5, "number of backends (on loopback, and in the lab)")
	fs.IntVar(&cfg.requests, "requests", 10000, "requests per strategy")
	fs.IntVar(&cfg.concurrency, "concurrency", 1000, "concurrent clients")
	fs.DurationVar(&cfg.timeout, "timeout", 1500*time.Millisecond, "client timeout per request: a request not answered by then is lost")
	fs.BoolVar(&cfg.killBackend, "kill-backend", false, "kill one backend halfway through each strategy to show failover")
	fs.StringVar(&cfg.only, "only", "", "comma-separated strategies to run (default: all)")
	fs.BoolVar(&cfg.progress, "progress", true, "print a progress line while running")
	fs.BoolVar(&cfg.verbose, "v", false, "log what the balancers do")
	var names []string
	for _, p := range presets {
		names = append(names, p.name)
	}
	backendName := fs.String("backend", "gunicorn", "the backends' capacity model, after the write-up's servers: "+strings.Join(names, ", "))
	workers := fs.Int("workers", 0, "workers per backend (default: the -backend preset's)")
	backlog := fs.Int("backlog", 0, "listen backlog per backend (default: the -backend preset's)")
	service := fs.Duration("service", 0, "mean service time of a request (default: the -backend preset's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	m, err := preset(*backendName)
	if err != nil {
		fmt.Fprintf(stderr, "lbkit demo: -backend: %v\n", err)
		return 2
	}
	if *workers < 0 || *backlog < 0 || *service < 0 {
		fmt.Fprintln(stderr, "lbkit demo: -workers, -backlog and -service cannot be negative")
		return 2
	}
	if *workers > 0 {
		m.workers = *workers
	}
	if *backlog > 0 {
		m.backlog = *backlog
	}
	if *service > 0 {
		m.service = *service
	}
	cfg.model = m
	if cfg.backends < 1 || cfg.backends > 200 || cfg.requests < 1 || cfg.concurrency < 1 {
		fmt.Fprintln(stderr, "lbkit demo: -backends must be 1..200, -requests and -concurrency at least 1")
		return 2
	}
	if cfg.killBackend && cfg.backends < 2 {
		fmt.Fprintln(stderr, "lbkit demo: -kill-backend needs at least 2 backends")
		return 2
	}
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))

	results, err := runDemo(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "lbkit demo: %v\n", err)
		return 1
	}
	printResults(stdout, cfg, results)
	for _, r := range results {
		if r.skip == "" && r.lost() {
			return 1
		}
	}
	return 0
}

// result is one row of the demo's table.
type result struct {
	name     string
	skip     string // why the strategy did not run
	ok, fail int
	elapsed  time.Duration
	p50, p99 time.Duration
	perBack  []int64
	expected bool // failures are expected here (no balancer to fail over)
	single   bool // one backend alone (direct): no spread to measure
	writeUp  string
	note     string
}

func (r result) lost() bool { return r.fail > 0 && !r.expected }

// spread is the busiest backend's share divided by the mean share among
// backends that were alive throughout (1.00 is perfectly even).
func (r result) spread() float64 {
	var total, most int64
	n := 0
	for _, c := range r.perBack {
		total += c
		most = max(most, c)
		n++
	}
	if total == 0 {
		return 0
	}
	return float64(most) / (float64(total) / float64(n))
}

func printResults(w io.Writer, cfg demoConfig, results []result) {
	fmt.Fprintf(w, "\nlbkit demo: %d requests per strategy, %d concurrent clients, %d backends (loopback; a namespace lab for iplb/l2lb)", cfg.requests, cfg.concurrency, cfg.backends)
	if cfg.killBackend {
		fmt.Fprint(w, ", backend 1 killed halfway")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "backends: %v\n          %s; client timeout %v\n", cfg.model, cfg.model.backlogNote(), cfg.timeout)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "strategy\tsuccess\ttime\treq/s\tp50\tp99\tper backend\tspread\twrite-up\t")
	for _, r := range results {
		if r.skip != "" {
			continue
		}
		total := r.ok + r.fail
		pct := 100 * float64(r.ok) / float64(max(total, 1))
		rps := float64(r.ok) / r.elapsed.Seconds()
		counts := make([]string, len(r.perBack))
		for i, c := range r.perBack {
			counts[i] = fmt.Sprint(c)
		}
		spread := "-"
		if !r.single {
			spread = fmt.Sprintf("%.2f", r.spread())
		}
		writeUp := "-"
		if r.writeUp != "" {
			writeUp = r.writeUp
		}
		fmt.Fprintf(tw, "%s\t%.2f%%\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", r.name, pct,
			r.elapsed.Round(time.Millisecond), rps, fmtDur(r.p50), fmtDur(r.p99), strings.Join(counts, "/"), spread, writeUp)
	}
	tw.Flush()
	for _, r := range results {
		switch {
		case r.skip != "":
			fmt.Fprintf(w, "skipped %s: %s\n", r.name, r.skip)
		case r.note != "":
			fmt.Fprintf(w, "%s: %s\n", r.name, r.note)
		}
	}
	fmt.Fprintln(w, "spread = busiest backend / mean (1.00 is even); direct = one backend alone, as in the write-up")
	fmt.Fprintf(w, "write-up (one server alone, 10,000 requests at 1,000 concurrency): %s\n", writeUpFigures)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}

// httpClient returns a keep-alive client sized for the concurrency.
func httpClient(cfg demoConfig, follow bool) *http.Client {
	return httpClientDial(cfg, follow, (&net.Dialer{Timeout: cfg.timeout}).DialContext)
}

// httpClientDial is httpClient with its own dial function (for clients
// inside a namespace lab).
func httpClientDial(cfg demoConfig, follow bool, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         dial,
		MaxIdleConns:        cfg.concurrency * 2,
		MaxIdleConnsPerHost: cfg.concurrency,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	c := &http.Client{Transport: tr, Timeout: cfg.timeout}
	if !follow {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return c
}

// get performs one GET and reads the whole body; any status but 200 is an
// error.
func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// drive runs total requests through do with conc workers, kills a backend
// halfway when asked, and measures.
func drive(ctx context.Context, cfg demoConfig, name string, bs []*backend, do func(ctx context.Context, i int) error, progress io.Writer) result {
	for _, b := range bs {
		b.count.Store(0)
	}
	lat := make([]time.Duration, cfg.requests)
	var next, done, failed atomic.Int64
	var killOnce sync.Once
	var firstErr atomic.Value
	start := time.Now()
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Go(func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					fmt.Fprintf(progress, "\r%-12s %6d/%d done, %d failed   \n", name, done.Load(), cfg.requests, failed.Load())
					return
				case <-t.C:
					fmt.Fprintf(progress, "\r%-12s %6d/%d done, %d failed   ", name, done.Load(), cfg.requests, failed.Load())
				}
			}
		})
	}
	var wg sync.WaitGroup
	for range min(cfg.concurrency, cfg.requests) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.requests || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := do(ctx, i)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				if done.Add(1) == int64(cfg.requests/2) && cfg.killBackend {
					killOnce.Do(func() { bs[0].kill() })
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopProgress)
	pwg.Wait()

	n := int(done.Load())
	lat = lat[:n]
	slices.Sort(lat)
	r := result{name: name, ok: n - int(failed.Load()), fail: int(failed.Load()), elapsed: elapsed}
	if n > 0 {
		r.p50 = lat[n/2]
		r.p99 = lat[min(n-1, n*99/100)]
	}
	for _, b := range bs {
		r.perBack = append(r.perBack, b.count.Load())
	}
	if e, ok := firstErr.Load().(string); ok {
		r.note = "first error: " + e
	}
	return r
}
