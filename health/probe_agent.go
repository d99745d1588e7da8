package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
)

// maxAgentLine bounds the agent report Agent reads.
const maxAgentLine = 1024

// Agent reads an agent report the way HAProxy's agent-check does: it
// connects over TCP, optionally sends Send, and reads one line of agent
// words (see [ParseAgent]) that the agent writes before closing. The
// check fails if the connection fails or no line arrives before the
// probe's deadline; words it does not know are skipped. Combine it with
// a health check through [All] to check a server and listen to its agent.
type Agent struct {
	// Port is the agent's TCP port on the target's address. Zero means
	// the target's own port.
	Port uint16
	// Send, if set, is written once the connection is up (HAProxy's
	// agent-send).
	Send []byte
}

// Probe connects to the agent, reads its report and returns it. It blocks
// until the report, an error or the end of ctx, and is safe for
// concurrent use.
func (a Agent) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	if a.Port != 0 {
		addr = netip.AddrPortFrom(addr.Addr(), a.Port)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return Report{}, fmt.Errorf("health: agent probe: %w", err)
	}
	defer conn.Close()
	stop := bindDeadline(ctx, conn)
	defer stop()
	if len(a.Send) > 0 {
		if _, err := conn.Write(a.Send); err != nil {
			return Report{}, fmt.Errorf("health: agent probe: %w", ctxErr(ctx, err))
		}
	}
	r := bufio.NewReaderSize(conn, maxAgentLine)
	line, err := r.ReadSlice('\n')
	if len(line) == 0 && err != nil {
		return Report{}, fmt.Errorf("health: agent probe: no report: %w", ctxErr(ctx, err))
	}
	rep, _ := ParseAgent(string(line))
	return rep, nil
}

// All checks a target with every prober in turn and passes only if all
// pass, stopping at the first failure. The reports merge: a later
// prober's agent state and weight replace an earlier one's. A typical
// use is All{HTTP{...}, Agent{Port: 9999}}: the server must answer and
// its agent sets its drain state and weight.
type All []Prober

// Probe runs the probers in order under ctx. It is safe for concurrent
// use if the probers are.
func (all All) Probe(ctx context.Context, addr netip.AddrPort) (Report, error) {
	var merged Report
	for _, p := range all {
		rep, err := p.Probe(ctx, addr)
		if rep.Agent != AgentNone {
			merged.Agent = rep.Agent
		}
		if rep.HasWeight {
			merged.HasWeight, merged.Weight, merged.WeightPercent = true, rep.Weight, rep.WeightPercent
		}
		if err != nil {
			return merged, err
		}
	}
	return merged, nil
}
