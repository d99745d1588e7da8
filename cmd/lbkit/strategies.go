package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// strategy is one way of spreading the demo's requests over the backends.
// setup prepares the front-end for loopback backends bs and returns the
// per-request function and a cleanup.
type strategy struct {
	name  string
	setup func(ctx context.Context, cfg demoConfig, bs []*backend) (do func(ctx context.Context, i int) error, cleanup func(), err error)
	// run, when set, replaces the loopback set-up: the strategy builds its
	// own backends (in a namespace lab) and returns its row.
	run func(ctx context.Context, cfg demoConfig, progress io.Writer) (result, error)
	// expectLoss marks the strategy without a balancer (direct, one
	// backend alone): it loses requests by design, to overload or to a
	// killed backend, and that does not fail the demo.
	expectLoss bool
}

func strategies() []strategy {
	return append([]strategy{
		{name: "direct", setup: setupDirect, expectLoss: true},
		{name: "redirect", setup: setupRedirect},
		{name: "dns", setup: setupDNS},
		{name: "http-proxy", setup: setupHTTPProxy},
		{name: "tcp-proxy", setup: setupTCPProxy},
	}, labStrategies()...)
}

func runDemo(ctx context.Context, cfg demoConfig, progressOut io.Writer) ([]result, error) {
	var only map[string]bool
	if cfg.only != "" {
		only = map[string]bool{}
		for _, s := range strings.Split(cfg.only, ",") {
			only[strings.TrimSpace(s)] = true
		}
		for name := range only {
			found := false
			for _, s := range strategies() {
				found = found || s.name == name
			}
			if !found {
				return nil, fmt.Errorf("unknown strategy %q", name)
			}
		}
	}
	var progress io.Writer
	if cfg.progress {
		progress = progressOut
	}
	var results []result
	for _, s := range strategies() {
		if only != nil && !only[s.name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return results, err
		}
		r, err := runStrategy(ctx, cfg, s, progress)
		if err != nil {
			return results, fmt.Errorf("%s: %w", s.name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

func runStrategy(ctx context.Context, cfg demoConfig, s strategy, progress io.Writer) (result, error) {
	if s.run != nil {
		return s.run(ctx, cfg, progress)
	}
	bs, err := startBackends(cfg.backends, cfg.model)
	if err != nil {
		return result{}, err
	}
	defer func() {
		for _, b := range bs {
			b.kill()
		}
	}()
	do, cleanup, err := s.setup(ctx, cfg, bs)
	if err != nil {
		return result{}, err
	}
	defer cleanup()
	r := drive(ctx, cfg, s.name, bs, do, progress)
	r.expected = s.expectLoss
	if s.name == "direct" {
		r.single, r.writeUp = true, cfg.model.writeUp
	}
	return r, nil
}

// setupDirect is the baseline, the write-up's experiment: no balancer;
// every request goes to backend 1 alone.
func setupDirect(_ context.Context, cfg demoConfig, bs []*backend) (func(context.Context, int) error, func(), error) {
	c := httpClient(cfg, true)
	url := "http://" + bs[0].addr.String() + "/"
	do := func(ctx context.Context, _ int) error { return get(ctx, c, url) }
	return do, c.CloseIdleConnections, nil
}
