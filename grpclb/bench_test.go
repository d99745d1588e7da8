package grpclb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/balancer"
	_ "google.golang.org/grpc/balancer/leastrequest" // registers least_request_experimental
	_ "google.golang.org/grpc/balancer/roundrobin"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"

	"github.com/lbkit/lbkit/grpclb"
)

// fakeCC is a balancer.ClientConn without connections: its SubConns turn
// READY when asked to connect, so a policy's picker can be measured alone.
type fakeCC struct {
	balancer.ClientConn
	mu         sync.Mutex
	picker     balancer.Picker
	state      connectivity.State
	connecting []*fakeSC
	health     []func(balancer.SubConnState)
}

type fakeSC struct {
	balancer.SubConn
	cc       *fakeCC
	listener func(balancer.SubConnState)
}

func (cc *fakeCC) NewSubConn(_ []resolver.Address, o balancer.NewSubConnOptions) (balancer.SubConn, error) {
	return &fakeSC{cc: cc, listener: o.StateListener}, nil
}

// Connect queues the SubConn; connectAll makes it READY outside the
// policy's locks, as gRPC's serializer would.
func (sc *fakeSC) Connect() {
	sc.cc.mu.Lock()
	sc.cc.connecting = append(sc.cc.connecting, sc)
	sc.cc.mu.Unlock()
}

func (cc *fakeCC) connectAll() {
	for {
		cc.mu.Lock()
		q, h := cc.connecting, cc.health
		cc.connecting, cc.health = nil, nil
		cc.mu.Unlock()
		if len(q) == 0 && len(h) == 0 {
			return
		}
		for _, l := range h {
			l(balancer.SubConnState{ConnectivityState: connectivity.Ready})
		}
		for _, sc := range q {
			sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Connecting})
			sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Ready})
		}
	}
}
func (sc *fakeSC) Shutdown() {}
func (sc *fakeSC) RegisterHealthListener(l func(balancer.SubConnState)) {
	sc.cc.mu.Lock()
	sc.cc.health = append(sc.cc.health, l)
	sc.cc.mu.Unlock()
}

func (cc *fakeCC) UpdateState(s balancer.State) {
	cc.mu.Lock()
	cc.picker, cc.state = s.Picker, s.ConnectivityState
	cc.mu.Unlock()
}
func (cc *fakeCC) ResolveNow(resolver.ResolveNowOptions) {}

// buildPicker builds the named gRPC policy over n ready backends and
// returns its picker.
func buildPicker(tb testing.TB, name, config string, n int) balancer.Picker {
	tb.Helper()
	bb := balancer.Get(name)
	require.NotNil(tb, bb, name)
	cc := &fakeCC{}
	bal := bb.Build(cc, balancer.BuildOptions{})
	tb.Cleanup(bal.Close)
	var eps []resolver.Endpoint
	for i := range n {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: fmt.Sprintf("198.18.%d.%d:80", i/250, i%250+1)}}})
	}
	st := balancer.ClientConnState{ResolverState: resolver.State{Endpoints: eps}}
	if p, ok := bb.(balancer.ConfigParser); ok {
		c, err := p.ParseConfig(json.RawMessage(config))
		require.NoError(tb, err)
		st.BalancerConfig = c
	}
	require.NoError(tb, bal.UpdateClientConnState(st))
	cc.connectAll()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	require.Equal(tb, connectivity.Ready, cc.state, name)
	return cc.picker
}

// BenchmarkPick measures one pick and its Done, as gRPC makes them per
// RPC, for lbkit's policies next to gRPC-Go's round_robin and
// least_request.
func BenchmarkPick(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{3, 100} {
		for _, tc := range []struct{ name, policy, config string }{
			{"grpc-round_robin", "round_robin", `{}`},
			{"grpc-least_request", "least_request_experimental", `{"choiceCount": 2}`},
			{"lbkit-round_robin", grpclb.Name, `{"policy": "round_robin"}`},
			{"lbkit-least_request", grpclb.Name, `{"policy": "least_request"}`},
			{"lbkit-ewma", grpclb.Name, `{"policy": "ewma"}`},
			{"lbkit-ring_hash", grpclb.Name, `{"policy": "ring_hash", "epsilon": 0.25}`},
		} {
			p := buildPicker(b, tc.policy, tc.config, n)
			info := balancer.PickInfo{Ctx: ctx, FullMethodName: "/grpc.testing.TestService/UnaryCall"}
			b.Run(fmt.Sprintf("%s/n=%d", tc.name, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					r, err := p.Pick(info)
					if err != nil {
						b.Fatal(err)
					}
					if r.Done != nil {
						r.Done(balancer.DoneInfo{BytesReceived: true})
					}
				}
			})
			b.Run(fmt.Sprintf("%s/n=%d/parallel", tc.name, n), func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						r, err := p.Pick(info)
						if err != nil {
							b.Error(err)
							return
						}
						if r.Done != nil {
							r.Done(balancer.DoneInfo{BytesReceived: true})
						}
					}
				})
			})
		}
	}
}

// TestFakeClientConnPicks keeps the benchmark's harness honest: every
// policy built on it picks every backend.
func TestFakeClientConnPicks(t *testing.T) {
	for _, policy := range []string{"round_robin", grpclb.Name} {
		p := buildPicker(t, policy, `{}`, 3)
		seen := map[balancer.SubConn]bool{}
		for range 30 {
			r, err := p.Pick(balancer.PickInfo{Ctx: context.Background()})
			require.NoError(t, err)
			seen[r.SubConn] = true
		}
		require.Len(t, seen, 3, policy)
	}
}
