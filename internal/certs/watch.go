package certs

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// newWatcher watches the directories of the pairs' files when cfg.Watch
// is set, and returns nil otherwise. Directories, not files: a file
// renamed or linked over another (how certificate managers and
// Kubernetes secret volumes replace files) is a directory event, and a
// watch on the replaced file would be lost with it.
func (s *Store) newWatcher() (*fsnotify.Watcher, error) {
	if !s.cfg.Watch {
		return nil, nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("certs: watch: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range s.cfg.Pairs {
		for _, f := range []string{p.CertFile, p.KeyFile} {
			dir := filepath.Dir(f)
			if seen[dir] {
				continue
			}
			seen[dir] = true
			if err := w.Add(dir); err != nil {
				w.Close()
				return nil, fmt.Errorf("certs: watch %s: %w", dir, err)
			}
		}
	}
	return w, nil
}

// run rotates the ticket keys and, with w, reloads the pairs once their
// directories have been quiet for Debounce after a change, until ctx
// ends.
func (s *Store) run(ctx context.Context, w *fsnotify.Watcher) {
	defer close(s.done)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	var rotate <-chan time.Time
	if s.cfg.TicketRotation > 0 {
		t := time.NewTicker(s.cfg.TicketRotation)
		defer t.Stop()
		rotate = t.C
	}
	debounce := time.NewTimer(s.cfg.Debounce)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rotate:
			s.rotate()
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			debounce.Reset(s.cfg.Debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflowed queue may have hidden a change: read again.
			s.log.Warn("certs: watch", "err", err)
			debounce.Reset(s.cfg.Debounce)
		case <-debounce.C:
			err := s.Reload()
			if err != nil {
				s.log.Error("certs: reload failed; serving the certificates loaded before", "err", err)
			} else {
				s.log.Info("certs: reloaded", "pairs", len(s.cfg.Pairs))
			}
			if s.cfg.OnReload != nil {
				s.cfg.OnReload(err)
			}
		}
	}
}
