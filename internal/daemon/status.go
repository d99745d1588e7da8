package daemon

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/health"
)

// Status is what the admin endpoint's /status reports: the state of every
// pool and member, every listener, and the configuration's history.
type Status struct {
	// Revision counts the configurations applied since start (1 is the
	// first).
	Revision uint64 `json:"revision"`
	// ConfigFile is the file the configuration came from.
	ConfigFile string `json:"config_file,omitempty"`
	// Started is when the daemon started.
	Started time.Time `json:"started"`
	// LastReload is when the last reload was attempted, and
	// LastReloadOK whether it was applied; LastReloadError says why not.
	LastReload      time.Time `json:"last_reload,omitzero"`
	LastReloadOK    bool      `json:"last_reload_ok"`
	LastReloadError string    `json:"last_reload_error,omitempty"`
	// Reloads lists the outcome of recent reloads, newest last.
	Reloads   []ReloadStatus   `json:"reloads"`
	Pools     []PoolStatus     `json:"pools"`
	Listeners []ListenerStatus `json:"listeners"`
	// Cluster is the node's part in a cluster (lbkit serve -etcd).
	Cluster *ClusterStatus `json:"cluster,omitempty"`
}

// ReloadStatus is the outcome of one reload.
type ReloadStatus struct {
	Time     time.Time `json:"time"`
	OK       bool      `json:"ok"`
	Revision uint64    `json:"revision"`
	Error    string    `json:"error,omitempty"`
	// Trigger is what started it: "start", "signal", "file", "admin".
	Trigger string `json:"trigger"`
}

// PoolStatus is one pool.
type PoolStatus struct {
	Name    string         `json:"name"`
	Policy  string         `json:"policy"`
	Key     string         `json:"key,omitempty"`
	Ready   int            `json:"ready"`
	Panic   bool           `json:"panic"`
	Version uint64         `json:"snapshot_version"`
	Members []MemberStatus `json:"members"`
	// Discovery lists the pool's discovery sources, when its members
	// come from discovery (see SourceStatus).
	Discovery []SourceStatus `json:"discovery,omitempty"`
}

// MemberStatus is one member of a pool.
type MemberStatus struct {
	Addr string            `json:"addr"`
	Zone string            `json:"zone,omitempty"`
	Meta map[string]string `json:"meta,omitempty"`
	// Weight is the configured weight; EffectiveWeight the weight in the
	// ready set now (slow start, agent, override), 0 when not ready.
	Weight          uint32  `json:"weight"`
	EffectiveWeight float64 `json:"effective_weight"`
	Ready           bool    `json:"ready"`
	// Health is the pool's view: unknown, healthy or unhealthy.
	Health   balancer.Health `json:"health"`
	Draining bool            `json:"draining"`
	// Check is the health checker's state and why it is so.
	Check *CheckStatus `json:"check,omitempty"`
	// Override is an operator's drain or weight, kept until the
	// configuration changes the member.
	Override *balancer.Override `json:"override,omitempty"`
	InFlight int64              `json:"in_flight"`
	Requests uint64             `json:"requests"`
	Failures uint64             `json:"failures"`
	// LatencyEWMAMillis is the peak-EWMA latency, in milliseconds.
	LatencyEWMAMillis float64 `json:"latency_ewma_ms"`
}

// CheckStatus is the health checker's view of a member.
type CheckStatus struct {
	State      health.State      `json:"state"`
	Probe      health.State      `json:"probe"`
	Ejected    bool              `json:"ejected"`
	Ejections  int               `json:"ejections"`
	Agent      health.AgentState `json:"agent"`
	LastError  string            `json:"last_error,omitempty"`
	Reason     string            `json:"reason,omitempty"`
	Since      time.Time         `json:"since,omitzero"`
	EjectTotal uint64            `json:"ejections_total"`
}

// ListenerStatus is one listener.
type ListenerStatus struct {
	Name  string   `json:"name"`
	Type  string   `json:"type"`
	Addr  string   `json:"addr"`
	Pools []string `json:"pools"`
	// Since is when the listener started serving with its current
	// configuration.
	Since time.Time `json:"since"`
}

// lastEvents remembers, per target, the last health transition and how
// many passive ejections it had, from the checker's events.
type lastEvents struct {
	mu     sync.Mutex
	last   map[netip.AddrPort]health.Event
	ejects map[netip.AddrPort]uint64
}

func newLastEvents() *lastEvents {
	return &lastEvents{last: make(map[netip.AddrPort]health.Event), ejects: make(map[netip.AddrPort]uint64)}
}

func (l *lastEvents) record(ev health.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.Reason == "removed" {
		delete(l.last, ev.Target)
		return
	}
	if ev.State != ev.Prev || ev.Reason == "added" {
		l.last[ev.Target] = ev
	}
	if ev.State == health.Unhealthy && len(ev.Reason) > 8 && ev.Reason[:8] == "passive:" {
		l.ejects[ev.Target]++
	}
}

func (l *lastEvents) get(a netip.AddrPort) (health.Event, uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev, ok := l.last[a]
	return ev, l.ejects[a], ok
}

// poolStatus builds the status of one pool.
func poolStatus(name, policy, key string, p *balancer.Pool, chk *health.Checker, ev *lastEvents) PoolStatus {
	s := p.Snapshot()
	ps := PoolStatus{Name: name, Policy: policy, Key: key, Ready: len(s.Ready), Panic: s.Panic, Version: s.Version}
	eff := make(map[*balancer.Endpoint]float64, len(s.Ready))
	for _, w := range s.Ready {
		eff[w.Endpoint] = w.Weight
	}
	for _, ep := range s.Members {
		b := ep.Backend()
		ewma, _ := ep.LatencyEWMA()
		w, ready := eff[ep]
		m := MemberStatus{
			Addr: b.Addr.String(), Zone: b.Zone, Meta: b.Meta, Weight: b.Weight,
			EffectiveWeight: w, Ready: ready, Health: ep.Health(), Draining: ep.Draining(),
			InFlight: ep.InFlight(), Requests: ep.Requests(), Failures: ep.Failures(),
			LatencyEWMAMillis: ewma / 1e6,
		}
		if o := ep.Override(); o != (balancer.Override{}) {
			m.Override = &o
		}
		if chk != nil {
			if st, ok := chk.Status(b.Addr); ok {
				cs := &CheckStatus{State: st.State, Probe: st.Probe, Ejected: st.Ejected, Ejections: st.Ejections, Agent: st.Agent}
				if st.LastErr != nil {
					cs.LastError = st.LastErr.Error()
				}
				if last, n, ok := ev.get(b.Addr); ok {
					cs.Reason, cs.Since, cs.EjectTotal = last.Reason, last.Time, n
					if cs.LastError == "" && last.Err != nil {
						cs.LastError = last.Err.Error()
					}
				}
				m.Check = cs
			}
		}
		ps.Members = append(ps.Members, m)
	}
	return ps
}

func sortStatus(st *Status) {
	slices.SortFunc(st.Pools, func(a, b PoolStatus) int { return cmpString(a.Name, b.Name) })
	slices.SortFunc(st.Listeners, func(a, b ListenerStatus) int { return cmpString(a.Name, b.Name) })
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
