package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"
)

// Entry is one access-log line: an HTTP request, a redirect or a TCP
// connection.
type Entry struct {
	Time     time.Time
	Client   string
	Listener string
	Pool     string
	// Upstream is the member that served it, empty if none did.
	Upstream string
	// Method, Target and Proto describe an HTTP request; empty for TCP.
	Method, Target, Proto string
	// Status is the HTTP status sent (0 for TCP).
	Status   int
	Bytes    int64
	Duration time.Duration
	Retries  int
	// Referer and UserAgent feed the Combined Log Format.
	Referer, UserAgent string
	Err                error
}

// accessLog writes entries as JSON (through log/slog) or in the Combined
// Log Format, to stdout, stderr or a file reopened on Reopen (SIGUSR1),
// so logrotate's move-then-signal works.
type accessLog struct {
	mu       sync.Mutex
	path     string
	combined bool
	f        *os.File // nil for stdout/stderr
	w        io.Writer
	json     *slog.Logger
}

// openAccessLog opens path ("stdout", "stderr" or a file, appended to).
func openAccessLog(path string, combined bool) (*accessLog, error) {
	a := &accessLog{path: path, combined: combined}
	if err := a.Reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reopen opens the log file again (after a rotation moved it).
func (a *accessLog) Reopen() error {
	var w io.Writer
	var f *os.File
	switch a.path {
	case "stdout":
		w = os.Stdout
	case "stderr":
		w = os.Stderr
	default:
		var err error
		f, err = os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("daemon: access log: %w", err)
		}
		w = f
	}
	a.mu.Lock()
	old := a.f
	a.f, a.w = f, w
	a.json = slog.New(slog.NewJSONHandler(w, nil))
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the log file.
func (a *accessLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		err := a.f.Close()
		a.f = nil
		a.w = io.Discard
		a.json = slog.New(slog.DiscardHandler)
		return err
	}
	return nil
}

// Log writes one entry. It is safe for concurrent use.
func (a *accessLog) Log(e Entry) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.combined {
		_, _ = io.WriteString(a.w, combinedLine(&e))
		return
	}
	attrs := []slog.Attr{
		slog.String("client", e.Client), slog.String("listener", e.Listener), slog.String("pool", e.Pool),
		slog.String("upstream", e.Upstream),
	}
	if e.Method != "" {
		attrs = append(attrs, slog.String("method", e.Method), slog.String("target", e.Target), slog.String("proto", e.Proto))
	}
	attrs = append(attrs, slog.Int("status", e.Status), slog.Int64("bytes", e.Bytes),
		slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000), slog.Int("retries", e.Retries))
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	a.json.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// combinedLine formats e in the Combined Log Format, followed by lbkit's
// fields: listener, pool, upstream, duration in seconds and retries.
func combinedLine(e *Entry) string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	req := "-"
	if e.Method != "" {
		req = e.Method + " " + e.Target + " " + e.Proto
	}
	return fmt.Sprintf("%s - - [%s] %s %d %d %s %s listener=%s pool=%s upstream=%s duration=%.6f retries=%d\n",
		dash(e.Client), e.Time.Format("02/Jan/2006:15:04:05 -0700"), strconv.Quote(req), e.Status, e.Bytes,
		strconv.Quote(dash(e.Referer)), strconv.Quote(dash(e.UserAgent)),
		dash(e.Listener), dash(e.Pool), dash(e.Upstream), e.Duration.Seconds(), e.Retries)
}
