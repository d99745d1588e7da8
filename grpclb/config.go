package grpclb

import (
	"encoding/json"
	"fmt"
	"time"

	lb "github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/ewma"
	"github.com/lbkit/lbkit/balancer/leastconn"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/balancer/random"
	"github.com/lbkit/lbkit/balancer/ringhash"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/circuit"
	"google.golang.org/grpc/serviceconfig"
)

// The policies Config.Policy names.
const (
	PolicyEWMA         = "ewma"          // peak-EWMA latency, two random choices (the default)
	PolicyLeastRequest = "least_request" // fewest RPCs in flight, two random choices
	PolicyRoundRobin   = "round_robin"
	PolicyRandom       = "random"
	PolicyRingHash     = "ring_hash" // consistent hashing, bounded loads with Epsilon
	PolicyMaglev       = "maglev"
)

// Config is the balancer's configuration in a gRPC service config, under
// the name [Name]:
//
//	{"loadBalancingConfig": [{"lbkit": {
//	    "policy": "ring_hash", "key": "header:x-user", "epsilon": 0.25,
//	    "slowStart": "30s",
//	    "circuit": {"pool": {"retryBudget": {"percent": 20}}, "member": {"maxRequests": 100}}
//	}}]}
//
// Every field is optional.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	// Policy is the lbkit policy that picks: PolicyEWMA (the default),
	// PolicyLeastRequest, PolicyRoundRobin, PolicyRandom, PolicyRingHash
	// or PolicyMaglev.
	Policy string `json:"policy,omitempty"`
	// Key is the pick key in balancer.ParseKey's form. "header:NAME"
	// hashes the first value of the outgoing metadata key NAME and
	// "path" the full method name; an RPC without the metadata, and the
	// other sources, pick freely (a client has no client address). A key
	// set with WithKey on the RPC's context takes precedence.
	Key string `json:"key,omitempty"`
	// Epsilon is ring_hash's load bound ε (ringhash.Builder.Epsilon):
	// no backend takes more than (1+ε) times its share of the RPCs in
	// flight. Zero is plain consistent hashing.
	Epsilon float64 `json:"epsilon,omitempty"`
	// SlowStart is the window over which a backend that becomes ready
	// again (or joins after the channel is in service) ramps up to its
	// full weight, as a Go duration ("30s"). Empty disables it.
	SlowStart string `json:"slowStart,omitempty"`
	// Circuit sets the circuit breakers and retry budget.
	Circuit CircuitConfig `json:"circuit"`

	key       lb.Key
	slowStart time.Duration
}

// CircuitConfig is circuit.Config in a service config's JSON.
type CircuitConfig struct {
	Pool   Thresholds `json:"pool"`
	Member Thresholds `json:"member"`
}

// Thresholds is circuit.Thresholds in a service config's JSON; zero (or
// absent) means no limit.
type Thresholds struct {
	MaxConnections     int `json:"maxConnections,omitempty"`
	MaxPendingRequests int `json:"maxPendingRequests,omitempty"`
	MaxRequests        int `json:"maxRequests,omitempty"`
	MaxRetries         int `json:"maxRetries,omitempty"`
	RetryBudget        struct {
		Percent             float64 `json:"percent,omitempty"`
		MinRetryConcurrency int     `json:"minRetryConcurrency,omitempty"`
	} `json:"retryBudget"`
}

func (t Thresholds) circuit() circuit.Thresholds {
	return circuit.Thresholds{
		MaxConnections:     t.MaxConnections,
		MaxPendingRequests: t.MaxPendingRequests,
		MaxRequests:        t.MaxRequests,
		MaxRetries:         t.MaxRetries,
		RetryBudget:        circuit.RetryBudget{Percent: t.RetryBudget.Percent, MinConcurrency: t.RetryBudget.MinRetryConcurrency},
	}
}

func (c *Config) circuit() circuit.Config {
	return circuit.Config{Pool: c.Circuit.Pool.circuit(), Member: c.Circuit.Member.circuit()}
}

// ParseConfig parses and validates the balancer's JSON configuration.
func ParseConfig(js json.RawMessage) (*Config, error) {
	c := new(Config)
	if len(js) > 0 {
		if err := json.Unmarshal(js, c); err != nil {
			return nil, fmt.Errorf("grpclb: config: %w", err)
		}
	}
	if _, err := c.builder(); err != nil {
		return nil, err
	}
	k, err := lb.ParseKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("grpclb: config: %w", err)
	}
	c.key = k
	if c.SlowStart != "" {
		d, err := time.ParseDuration(c.SlowStart)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("grpclb: config: slowStart %q is not a duration ≥ 0", c.SlowStart)
		}
		c.slowStart = d
	}
	if c.Epsilon < 0 {
		return nil, fmt.Errorf("grpclb: config: epsilon %v < 0", c.Epsilon)
	}
	if _, err := circuit.NewGroup(c.circuit()); err != nil {
		return nil, fmt.Errorf("grpclb: config: %w", err)
	}
	return c, nil
}

// builder returns the lbkit policy c names.
func (c *Config) builder() (lb.Builder, error) {
	switch c.Policy {
	case "", PolicyEWMA:
		return ewma.Builder{}, nil
	case PolicyLeastRequest:
		return leastconn.Builder{}, nil
	case PolicyRoundRobin:
		return roundrobin.Builder{}, nil
	case PolicyRandom:
		return random.Builder{}, nil
	case PolicyRingHash:
		return ringhash.Builder{Epsilon: c.Epsilon}, nil
	case PolicyMaglev:
		return maglev.Builder{}, nil
	}
	return nil, fmt.Errorf("grpclb: config: unknown policy %q", c.Policy)
}

// samePool reports whether pools built for c and d pick alike.
func (c *Config) samePool(d *Config) bool {
	return c.Policy == d.Policy && c.Epsilon == d.Epsilon && c.slowStart == d.slowStart
}
