package circuit_test

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/circuit"
)

// A Group admits work only while both the pool's and the member's
// thresholds allow it; a refusal is an error callers test with errors.Is.
func ExampleGroup() {
	g, _ := circuit.NewGroup(circuit.Config{
		Pool:   circuit.Thresholds{RetryBudget: circuit.RetryBudget{Percent: 20, MinConcurrency: 1}},
		Member: circuit.Thresholds{MaxRequests: 2},
	})
	m := g.Member(netip.MustParseAddrPort("198.18.0.10:80"))
	for i := range 3 {
		if err := g.Acquire(m, circuit.Requests); err != nil {
			fmt.Println("request", i, "refused:", err, errors.Is(err, circuit.ErrOpen))
		}
	}
	// Two requests in flight: 20% of 2 is under the minimum of 1 retry.
	fmt.Println("retry 1:", g.Acquire(m, circuit.Retries))
	fmt.Println("retry 2:", g.Acquire(m, circuit.Retries))
	fmt.Println("overflows:", g.Pool().Overflows(circuit.Retries), m.Overflows(circuit.Requests))
	// Output:
	// request 2 refused: circuit: breaker open: max requests true
	// retry 1: <nil>
	// retry 2: circuit: breaker open: retry budget exhausted
	// overflows: 1 1
}
