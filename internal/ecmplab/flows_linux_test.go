//go:build linux

package ecmplab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
)

// Sizes of the lab runs: bounded in count and time.
const (
	openFlows    = 600             // established connections per survival run
	forcedFlows  = 40              // flows forced through each node in turn
	askTimeout   = 2 * time.Second // one request on an established connection
	askParallel  = 64              // requests in flight at once
	fixedPortLow = 20000           // below the ephemeral range: free in a fresh lab
)

var quiet = slog.New(slog.DiscardHandler)

// flow is an established connection and the backend it reached first.
type flow struct {
	conn  *Conn
	first Reply
}

// members returns the addresses of the lab's first n backends.
func (l *Lab) members(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for _, b := range l.Backends[:n] {
		out = append(out, b.Addr)
	}
	return out
}

// nameOf maps a backend address to its name.
func (l *Lab) nameOf(addr netip.AddrPort) string {
	for _, b := range l.Backends {
		if b.Addr == addr {
			return b.Name()
		}
	}
	return "?" + addr.String()
}

// rotated returns the members as node i lists them: rotated by i, and
// reversed on odd nodes, so no two nodes of three list them alike.
func rotated(members []netip.AddrPort, i int) []balancer.Backend {
	out := make([]balancer.Backend, 0, len(members))
	for k := range members {
		out = append(out, balancer.Backend{Addr: members[(k+i)%len(members)]})
	}
	if i%2 == 1 {
		for a, b := 0, len(out)-1; a < b; a, b = a+1, b-1 {
			out[a], out[b] = out[b], out[a]
		}
	}
	return out
}

// newPool returns a Maglev pool of the members in node i's order.
func newPool(t testing.TB, members []netip.AddrPort, i int) *balancer.Pool {
	t.Helper()
	p := balancer.MustNew(balancer.Config{Builder: maglev.Builder{}})
	require.NoError(t, p.Set(rotated(members, i)))
	t.Cleanup(func() { p.Close() })
	return p
}

// open dials n connections to the VIP, spread over the client's addresses
// with ephemeral ports, and asks once on each.
func (l *Lab) open(t testing.TB, n int) []*flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flows := make([]*flow, 0, n)
	for i := range n {
		c, err := l.Dial(ctx, netip.AddrPortFrom(l.ClientAddrs[i%len(l.ClientAddrs)], 0))
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		r, err := c.Ask(askTimeout)
		require.NoError(t, err, "flow %v", c.Local)
		flows = append(flows, &flow{conn: c, first: r})
	}
	return flows
}

// forced dials forcedFlows connections from fixed client addresses and
// ports, asks once on each and resets it, and returns the backend each
// reached, by client address and port. Called once per route, it sends
// the very same flows through different nodes.
func (l *Lab) forced(t testing.TB) map[netip.AddrPort]Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make(map[netip.AddrPort]Reply, forcedFlows)
	for i := range forcedFlows {
		src := netip.AddrPortFrom(l.ClientAddrs[i%len(l.ClientAddrs)], uint16(fixedPortLow+i))
		c, err := l.Dial(ctx, src)
		require.NoError(t, err)
		r, err := c.Ask(askTimeout)
		require.NoError(t, err, "flow %v", src)
		require.NoError(t, c.Abort())
		out[src] = r
	}
	return out
}

// askAll sends one request on every flow, askParallel at a time, and
// returns each answer or error.
func askAll(flows []*flow) ([]Reply, []error) {
	replies, errs := make([]Reply, len(flows)), make([]error, len(flows))
	sem := make(chan struct{}, askParallel)
	var wg sync.WaitGroup
	for i, f := range flows {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			replies[i], errs[i] = f.conn.Ask(askTimeout)
		})
	}
	wg.Wait()
	return replies, errs
}

// scenarios are the survival runs: each router hashing, a node killed
// alone and together with a backend joining.
var scenarios = []struct {
	hashing    Hashing
	name       string
	addBackend bool
}{
	{HashThreshold, "kill lb1", false},
	{HashThreshold, "kill lb1 + add be4", true},
	{Resilient, "kill lb1", false},
	{Resilient, "kill lb1 + add be4", true},
}

// survival is one row of the report.
type survival struct {
	plane, scenario     string
	hashing             Hashing
	flows               int // established connections before the failure
	onKilled            int // of them, carried by the killed node
	moved               int // flows that reached a node they had not used before (-1: unknown)
	changed             int // flows whose backend the survivors' table now names differently
	survived            int // answered by their first backend afterwards
	survivedFromKilled  int // of the killed node's flows
	survivedFromKilledN bool
	resets              int // broken flows reset (by the backend, which did not know them)
	timeouts            int // broken flows unanswered within askTimeout
	others              int // broken otherwise (closed, or answered by another backend)
}

// broke counts a flow that did not survive, by how it failed.
func (s *survival) broke(err error) {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		s.resets++
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.timeouts++
	default:
		s.others++
	}
}

func (s survival) share() float64 { return float64(s.survived) / float64(s.flows) }

// report logs rows as a table.
func report(t testing.TB, rows ...survival) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "established connections surviving the failure of one of 3 balancer nodes behind an ECMP router (L4 hash):\n")
	fmt.Fprintf(&b, "| data plane | router ECMP | scenario | flows | on killed node | moved to another node | new table changes backend | survived of the killed node's | survived | share survived | broken: reset / timeout / other |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		moved := fmt.Sprint(r.moved)
		if r.moved < 0 {
			moved = "n/a"
		}
		fromKilled := "n/a"
		if r.survivedFromKilledN {
			fromKilled = fmt.Sprintf("%d / %d", r.survivedFromKilled, r.onKilled)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %s | %d | %s | %d | %.1f %% | %d / %d / %d |\n",
			r.plane, r.hashing, r.scenario, r.flows, r.onKilled, moved, r.changed, fromKilled, r.survived, 100*r.share(),
			r.resets, r.timeouts, r.others)
	}
	t.Log(b.String())
}

// TestRotated checks the premise of the agreement tests: no two of three
// nodes list the members in the same order, and each lists them all.
func TestRotated(t *testing.T) {
	members := []netip.AddrPort{
		netip.MustParseAddrPort("198.18.0.21:80"),
		netip.MustParseAddrPort("198.18.0.22:80"),
		netip.MustParseAddrPort("198.18.0.23:80"),
		netip.MustParseAddrPort("198.18.0.24:80"),
	}
	for _, n := range []int{3, 4} {
		seen := map[string]int{}
		for i := range 3 {
			order := rotated(members[:n], i)
			require.ElementsMatch(t, rotatedAddrs(order), members[:n])
			key := fmt.Sprint(order)
			_, dup := seen[key]
			require.False(t, dup, "%d members: nodes %d and %d list them alike: %s", n, seen[key]+1, i+1, key)
			seen[key] = i
		}
	}
}

func rotatedAddrs(bs []balancer.Backend) []netip.AddrPort {
	out := make([]netip.AddrPort, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}
