package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrMismatch is wrapped by the errors of probes that reached the target
// but did not like its answer: a wrong HTTP status or body, a DNS rcode
// or missing answer, an unexpected UDP reply.
var ErrMismatch = errors.New("health: unexpected response")

// Prober is an active health check. Probe checks the target at addr once
// and returns a nil error if it is healthy. It must return when ctx is
// done (the checker sets the probe timeout through ctx) and must be safe
// for concurrent use: one Prober value may check many targets.
//
// The Report carries what an agent said, if the check can carry agent
// words (see [HTTP.AgentHeader]); it is applied even when err is not nil.
type Prober interface {
	Probe(ctx context.Context, addr netip.AddrPort) (Report, error)
}

// ProberFunc adapts a function to the [Prober] interface.
type ProberFunc func(ctx context.Context, addr netip.AddrPort) (Report, error)

// Probe calls f(ctx, addr).
func (f ProberFunc) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	return f(ctx, addr)
}

// AgentState is the administrative state an agent asked for, in the words
// of HAProxy's agent-check.
type AgentState uint8

// The agent states. AgentNone means the agent said nothing about state.
const (
	AgentNone  AgentState = iota
	AgentUp               // "up" or "ready": serve normally
	AgentDrain            // "drain": finish existing work, take no new work
	AgentMaint            // "maint": out of service for maintenance (drained)
	AgentDown             // "down", "fail" or "stopped": unhealthy
)

// String returns the agent word for s ("up", "drain", "maint", "down"),
// or "none".
func (s AgentState) String() string {
	switch s {
	case AgentUp:
		return "up"
	case AgentDrain:
		return "drain"
	case AgentMaint:
		return "maint"
	case AgentDown:
		return "down"
	default:
		return "none"
	}
}

// MarshalText returns s's agent word.
func (s AgentState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses an agent word as String prints it.
func (s *AgentState) UnmarshalText(b []byte) error {
	for v := AgentNone; v <= AgentDown; v++ {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return errors.New("health: unknown agent state " + strconv.Quote(string(b)))
}

// Report is what a probe learned beyond pass or fail: the words of an
// agent, if the target sent any. The zero value reports nothing.
type Report struct {
	// Agent is the state the agent asked for, or AgentNone.
	Agent AgentState
	// HasWeight reports that the agent asked for a weight. A weight of
	// zero drains the target, as in HAProxy.
	HasWeight bool
	// Weight is the weight asked for: absolute, or a percentage of the
	// target's configured weight if WeightPercent.
	Weight uint32
	// WeightPercent reports that Weight is a percentage ("75%").
	WeightPercent bool
}

// ParseAgent parses an agent report in the words of HAProxy's agent-check:
// words separated by spaces, tabs or commas, among "up", "ready",
// "drain", "maint", "down", "fail", "stopped", a weight "75%" (of the
// configured weight) or "75" or "weight=75" or "weight=75%", and
// "maxconn:N" (accepted and ignored). Text after '#' is a comment, and
// the report ends at the first line break. Words are case-insensitive.
// When several state words appear, the last wins.
//
// Unknown words are skipped and reported through a non-nil error along
// with everything understood, so a caller can apply a partly understood
// report as HAProxy does. ParseAgent does not allocate unless it fails.
func ParseAgent(s string) (Report, error) {
	if i := strings.IndexAny(s, "#\r\n"); i >= 0 {
		s = s[:i]
	}
	var r Report
	var bad string
	for len(s) > 0 {
		i := strings.IndexAny(s, " \t,")
		var w string
		if i < 0 {
			w, s = s, ""
		} else {
			w, s = s[:i], s[i+1:]
		}
		if w == "" {
			continue
		}
		switch {
		case strings.EqualFold(w, "up"), strings.EqualFold(w, "ready"):
			r.Agent = AgentUp
		case strings.EqualFold(w, "drain"):
			r.Agent = AgentDrain
		case strings.EqualFold(w, "maint"):
			r.Agent = AgentMaint
		case strings.EqualFold(w, "down"), strings.EqualFold(w, "fail"), strings.EqualFold(w, "stopped"):
			r.Agent = AgentDown
		case len(w) > 8 && strings.EqualFold(w[:8], "maxconn:"):
			if _, err := strconv.ParseUint(w[8:], 10, 32); err != nil && bad == "" {
				bad = w
			}
		default:
			v := w
			if len(v) > 7 && strings.EqualFold(v[:7], "weight=") {
				v = v[7:]
			}
			pct := strings.HasSuffix(v, "%")
			if pct {
				v = v[:len(v)-1]
			}
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				if bad == "" {
					bad = w
				}
				continue
			}
			r.HasWeight, r.Weight, r.WeightPercent = true, uint32(n), pct
		}
	}
	if bad != "" {
		return r, fmt.Errorf("health: agent report: unknown or malformed word %q", bad)
	}
	return r, nil
}

// TCP checks that a TCP connection to the target can be established; the
// connection is closed at once. The zero value is ready to use.
type TCP struct{}

// Probe dials addr and closes the connection. It blocks until the
// connection is established or refused, or ctx is done, and is safe for
// concurrent use.
func (TCP) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return Report{}, fmt.Errorf("health: tcp probe: %w", err)
	}
	return Report{}, conn.Close()
}

// UDP sends one datagram to the target and waits for a reply. An ICMP
// port-unreachable (a refused read) or no reply before the probe's
// deadline fails the check.
type UDP struct {
	// Send is the payload of the datagram; it may be empty.
	Send []byte
	// Expect, if not empty, must appear in the reply.
	Expect []byte
}

// Probe sends u.Send to addr from a new socket and reads one reply. It
// blocks until the reply, an error or the end of ctx, and is safe for
// concurrent use.
func (u UDP) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return Report{}, fmt.Errorf("health: udp probe: %w", err)
	}
	defer conn.Close()
	stop := bindDeadline(ctx, conn)
	defer stop()
	if _, err := conn.Write(u.Send); err != nil {
		return Report{}, fmt.Errorf("health: udp probe: %w", err)
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		return Report{}, fmt.Errorf("health: udp probe: %w", ctxErr(ctx, err))
	}
	if len(u.Expect) > 0 && !bytes.Contains(buf[:n], u.Expect) {
		return Report{}, fmt.Errorf("%w: udp probe: reply does not contain %q", ErrMismatch, u.Expect)
	}
	return Report{}, nil
}

// bindDeadline sets conn's deadline from ctx's and expires it when ctx is
// done, which unblocks any read or write. Call the returned function when
// done with conn.
func bindDeadline(ctx context.Context, conn net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
}

// ctxErr prefers ctx's error, which says why an I/O error happened. A
// connection's deadline comes from ctx, so its expiry is ctx's deadline
// even if ctx has not noticed yet.
func ctxErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

// Interface guards.
var (
	_ Prober = TCP{}
	_ Prober = UDP{}
	_ Prober = HTTP{}
	_ Prober = Agent{}
	_ Prober = All{}
	_ Prober = ProberFunc(nil)
)
