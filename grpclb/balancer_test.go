package grpclb_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/lbkit/lbkit/circuit"
	"github.com/lbkit/lbkit/grpclb"
)

func call(ctx context.Context, c testpb.TestServiceClient) (string, error) {
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return resp.GetHostname(), nil
}

// waitAll calls until each of n backends has answered, so the ready set is
// complete before a test depends on it.
func waitAll(t *testing.T, c testpb.TestServiceClient, n int) {
	t.Helper()
	seen := map[string]bool{}
	for i := 0; len(seen) < n; i++ {
		require.Less(t, i, 10000, "backends never all ready: %v", seen)
		host, err := call(t.Context(), c)
		require.NoError(t, err)
		seen[host] = true
	}
}

func TestParseConfig(t *testing.T) {
	for _, bad := range []string{
		`{"policy": "nope"}`,
		`{"key": "header"}`,
		`{"slowStart": "soon"}`,
		`{"epsilon": -1}`,
		`{"circuit": {"pool": {"maxRequests": -1}}}`,
		`{"circuit": {"pool": {"retryBudget": {"percent": 120}}}}`,
		`[]`,
	} {
		_, err := grpclb.ParseConfig([]byte(bad))
		assert.Error(t, err, bad)
	}
	c, err := grpclb.ParseConfig([]byte(`{"policy": "ring_hash", "key": "header:x-user", "epsilon": 0.25, "slowStart": "30s",
		"circuit": {"pool": {"retryBudget": {"percent": 20, "minRetryConcurrency": 5}}, "member": {"maxRequests": 100}}}`))
	require.NoError(t, err)
	assert.Equal(t, grpclb.PolicyRingHash, c.Policy)
	assert.Equal(t, 20.0, c.Circuit.Pool.RetryBudget.Percent)
	assert.Equal(t, 100, c.Circuit.Member.MaxRequests)
}

func TestPoliciesSpreadOverReadyBackends(t *testing.T) {
	servers := []*server{startServer(t, nil), startServer(t, nil), startServer(t, nil)}
	for _, policy := range []string{grpclb.PolicyEWMA, grpclb.PolicyLeastRequest, grpclb.PolicyRoundRobin, grpclb.PolicyRandom, grpclb.PolicyRingHash, grpclb.PolicyMaglev} {
		t.Run(policy, func(t *testing.T) {
			_, c := dial(t, fmt.Sprintf(`{"loadBalancingConfig": [{"lbkit": {"policy": %q}}]}`, policy), servers...)
			seen := map[string]int{}
			for range 60 {
				host, err := call(t.Context(), c)
				require.NoError(t, err)
				seen[host]++
			}
			assert.Len(t, seen, 3, "every backend got RPCs: %v", seen)
		})
	}
}

func TestRingHashKeyedByMetadata(t *testing.T) {
	servers := []*server{startServer(t, nil), startServer(t, nil), startServer(t, nil), startServer(t, nil)}
	_, c := dial(t, `{"loadBalancingConfig": [{"lbkit": {"policy": "ring_hash", "key": "header:x-user", "epsilon": 0.25}}]}`, servers...)
	waitAll(t, c, len(servers))
	hosts := map[string]bool{}
	for _, user := range []string{"ann", "bob", "cy", "dee", "eve", "fay"} {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "x-user", user)
		first, err := call(ctx, c)
		require.NoError(t, err)
		hosts[first] = true
		for range 5 {
			again, err := call(ctx, c)
			require.NoError(t, err)
			require.Equal(t, first, again, "user %s stays on one backend", user)
		}
		byKey, err := call(grpclb.WithKey(ctx, "tenant-1"), c)
		require.NoError(t, err)
		byKey2, err := call(grpclb.WithKey(t.Context(), "tenant-1"), c)
		require.NoError(t, err)
		require.Equal(t, byKey, byKey2, "WithKey wins over the metadata")
	}
	assert.Greater(t, len(hosts), 1)
}

func TestHealthServiceTakesBackendOut(t *testing.T) {
	a, b := startServer(t, nil), startServer(t, nil)
	_, c := dial(t, `{"loadBalancingConfig": [{"lbkit": {"policy": "round_robin"}}], "healthCheckConfig": {"serviceName": ""}}`, a, b)
	waitAll(t, c, 2)

	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	// The health stream delivers NOT_SERVING asynchronously: wait until
	// an RPC lands on b alone for a run of 20.
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := a.calls.Load()
		for range 20 {
			_, err := call(t.Context(), c)
			require.NoError(t, err)
		}
		if a.calls.Load() == before {
			break
		}
		require.True(t, time.Now().Before(deadline), "a still gets RPCs")
	}
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	deadline = time.Now().Add(10 * time.Second)
	for before := a.calls.Load(); a.calls.Load() == before; {
		_, err := call(t.Context(), c)
		require.NoError(t, err)
		require.True(t, time.Now().Before(deadline), "a is back in")
	}
}

func TestOverflowIsUnavailable(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	s := startServer(t, func(ctx context.Context) error {
		arrived <- struct{}{}
		<-release
		return nil
	})
	_, c := dial(t, `{"loadBalancingConfig": [{"lbkit": {"circuit": {"member": {"maxRequests": 1}}}}]}`, s)
	done := make(chan error, 1)
	go func() {
		_, err := call(context.Background(), c)
		done <- err
	}()
	<-arrived
	_, err := c.UnaryCall(t.Context(), &testpb.SimpleRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorIs(t, grpclb.Overflow(err), circuit.ErrMaxRequests)
	require.ErrorIs(t, grpclb.Overflow(err), circuit.ErrOpen)
	require.NoError(t, grpclb.Overflow(status.Error(codes.Unavailable, "other")))
	close(release)
	require.NoError(t, <-done)
}

// TestKilledBackendUnderLoad: 200 concurrent clients through the lbkit
// balancer with gRPC's retry policy; one of three backends stops
// abruptly a third of the way through; no RPC fails.
func TestKilledBackendUnderLoad(t *testing.T) {
	const clients, perClient = 200, 15
	servers := []*server{startServer(t, nil), startServer(t, nil), startServer(t, nil)}
	// gRPC's retryPolicy retries attempts the servers answered
	// UNAVAILABLE or never saw; the interceptor's RetryPolicy also
	// retries RPCs in flight when a server stopped (idempotent here).
	_, c := dialRetry(t, grpclb.RetryPolicy{MaxAttempts: 3, Backoff: circuit.Backoff{Base: time.Millisecond}},
		`{"loadBalancingConfig": [{"lbkit": {"policy": "ewma"}}], `+fmt.Sprintf(retryPolicy, 3)+`}`, servers...)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var completed, failed atomic.Int64
	var firstErr atomic.Value
	kill := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range perClient {
				if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				if completed.Add(1) == clients*perClient/3 {
					once.Do(func() { close(kill) })
				}
			}
		})
	}
	<-kill
	servers[0].srv.Stop()
	wg.Wait()
	require.EqualValues(t, clients*perClient, completed.Load())
	require.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
}

// TestRetryBudgetCapsRetries: every first attempt fails while 200 RPCs
// are in flight; with a 20% budget at most 20% of them are retried.
func TestRetryBudgetCapsRetries(t *testing.T) {
	const clients, percent = 200, 20
	gate := make(chan struct{})
	events := make(chan struct{}, 2*clients)
	var retries atomic.Int64
	h := func(ctx context.Context) error {
		md, _ := metadata.FromIncomingContext(ctx)
		if len(md.Get("grpc-previous-rpc-attempts")) == 0 {
			return status.Error(codes.Unavailable, "first attempts fail")
		}
		retries.Add(1)
		events <- struct{}{}
		<-gate
		return status.Error(codes.Unavailable, "retries fail too")
	}
	servers := []*server{startServer(t, h), startServer(t, h), startServer(t, h)}
	_, c := dial(t, `{"loadBalancingConfig": [{"lbkit": {"policy": "round_robin",
		"circuit": {"pool": {"retryBudget": {"percent": 20}}}}}], `+fmt.Sprintf(retryPolicy, 2)+`}`, servers...)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var refused atomic.Int64
	var other sync.Map
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			if errors.Is(grpclb.Overflow(err), circuit.ErrRetryBudgetExhausted) {
				refused.Add(1)
			} else {
				other.Store(fmt.Sprint(err), true)
			}
			events <- struct{}{}
		})
	}
	// Refused RPCs return at once; retried ones wait at the gate, so
	// they cannot return before it opens.
	for range clients {
		<-events
	}
	retried := retries.Load()
	close(gate)
	wg.Wait()
	t.Logf("retries sent: %d of %d failed RPCs (budget %d%%), refused %d", retried, clients, percent, refused.Load())
	assert.LessOrEqual(t, retried, int64(clients*percent/100))
	assert.GreaterOrEqual(t, retried, int64(clients*percent/100-10))
	assert.EqualValues(t, clients, retried+refused.Load(), "every RPC was either retried or refused by the budget")
	other.Range(func(k, _ any) bool {
		assert.Contains(t, k, "retries fail too", "the retried RPCs end with their retry's status")
		return true
	})
}

// TestSlowStartAfterRecovery: a backend that comes back from NOT_SERVING
// starts at a tenth of its weight, so with a long window it gets about
// one pick in eleven rather than one in two.
func TestSlowStartAfterRecovery(t *testing.T) {
	a, b := startServer(t, nil), startServer(t, nil)
	_, c := dial(t, `{"loadBalancingConfig": [{"lbkit": {"policy": "random", "slowStart": "1h"}}], "healthCheckConfig": {"serviceName": ""}}`, a, b)
	waitAll(t, c, 2)
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	for before := a.calls.Load(); ; {
		for range 20 {
			_, err := call(t.Context(), c)
			require.NoError(t, err)
		}
		if a.calls.Load() == before {
			break
		}
		before = a.calls.Load()
	}
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for before := a.calls.Load(); a.calls.Load() == before; {
		_, err := call(t.Context(), c)
		require.NoError(t, err)
	}
	before := a.calls.Load()
	const n = 400
	for range n {
		_, err := call(t.Context(), c)
		require.NoError(t, err)
	}
	share := float64(a.calls.Load()-before) / n
	t.Logf("recovered backend's share during slow start: %.3f", share)
	assert.Less(t, share, 0.2, "slow start holds the recovered backend back")
}

// TestPolicyChangeKeepsServing: a new service config with another policy
// reconfigures the pool in place.
func TestPolicyChangeKeepsServing(t *testing.T) {
	servers := []*server{startServer(t, nil), startServer(t, nil)}
	r := manual.NewBuilderWithScheme("lbkit-test")
	var addrs []resolver.Address
	for _, s := range servers {
		addrs = append(addrs, resolver.Address{Addr: s.addr.String()})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	cc, err := grpc.NewClient("lbkit-test:///fleet", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(r))
	require.NoError(t, err)
	defer cc.Close()
	cc.Connect() // builds the resolver
	c := testpb.NewTestServiceClient(cc)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-user", "ann")
	for _, tc := range []struct {
		policy string
		want   int // backends ann's 20 calls reach
	}{{"round_robin", 2}, {"ring_hash", 1}, {"round_robin", 2}} {
		r.UpdateState(resolver.State{Addresses: addrs, ServiceConfig: r.CC().ParseServiceConfig(
			fmt.Sprintf(`{"loadBalancingConfig": [{"lbkit": {"policy": %q, "key": "header:x-user"}}]}`, tc.policy))})
		waitAll(t, c, 2)
		seen := map[string]bool{}
		for range 20 {
			host, err := call(ctx, c)
			require.NoError(t, err)
			seen[host] = true
		}
		assert.Len(t, seen, tc.want, tc.policy)
	}
}

// TestInterceptorRetriesRPCInFlight: an RPC in flight on a server that
// stops is not retried by gRPC (the server may have run it), but is by the
// interceptor for an idempotent method, on the other backend.
func TestInterceptorRetriesRPCInFlight(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy grpclb.RetryPolicy
		ok     bool
	}{
		{"no retry policy", grpclb.RetryPolicy{}, false},
		{"not idempotent", grpclb.RetryPolicy{MaxAttempts: 2, Idempotent: func(string) bool { return false }}, false},
		{"idempotent", grpclb.RetryPolicy{MaxAttempts: 2, Backoff: circuit.Backoff{Base: time.Millisecond}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The stuck server sends response headers, so the attempt
			// is committed and gRPC will not retry it; arrived fires
			// when the client has them.
			arrived := make(chan struct{}, 1)
			stuck := startServer(t, func(ctx context.Context) error {
				if err := grpc.SendHeader(ctx, metadata.Pairs("x-stuck", "1")); err != nil {
					return err
				}
				<-ctx.Done()
				return ctx.Err()
			})
			fine := startServer(t, nil)
			_, c := dialWith(t, tc.policy, `{"loadBalancingConfig": [{"lbkit": {"policy": "round_robin"}}], `+fmt.Sprintf(retryPolicy, 3)+`}`,
				[]grpc.DialOption{grpc.WithStatsHandler(headerSignal(arrived))}, stuck, fine)
			for i := 0; ; i++ {
				require.Less(t, i, 100, "no RPC reached the stuck server")
				done := make(chan error, 1)
				go func() {
					_, err := call(context.Background(), c)
					done <- err
				}()
				select {
				case err := <-done:
					require.NoError(t, err) // it went to the fine server
					continue
				case <-arrived:
				}
				stuck.srv.Stop()
				err := <-done
				if tc.ok {
					require.NoError(t, err)
				} else {
					require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
				}
				return
			}
		})
	}
}

// headerSignal is a client stats handler that signals when response
// headers marked x-stuck arrive.
type headerSignal chan struct{}

func (h headerSignal) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (h headerSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (h headerSignal) HandleConn(context.Context, stats.ConnStats) {}
func (h headerSignal) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InHeader); ok && len(in.Header.Get("x-stuck")) > 0 {
		h <- struct{}{}
	}
}
