// Command grpclb shows a gRPC client using lbkit's balancer: three gRPC
// servers with the standard health service on loopback, a client whose
// service config picks the "lbkit" policy (ring hash keyed by the x-user
// metadata, with gRPC's retry policy and lbkit's retry budget), a backend
// reporting NOT_SERVING and then stopping. The program exits when done.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lbkit/lbkit/grpclb"
)

const serviceConfig = `{
  "loadBalancingConfig": [{"lbkit": {"policy": "ring_hash", "key": "header:x-user", "epsilon": 0.25,
    "circuit": {"pool": {"retryBudget": {"percent": 20}}}}}],
  "healthCheckConfig": {"serviceName": ""},
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
}`

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "grpclb example:", err)
		os.Exit(1)
	}
}

// backend answers UnaryCall with its name.
type backend struct {
	testpb.UnimplementedTestServiceServer
	name string
}

func (b *backend) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: b.name}, nil
}

func run(w io.Writer) error {
	names := []string{"alpha", "beta", "gamma"}
	servers := map[string]*grpc.Server{}
	healths := map[string]*health.Server{}
	var addrs []resolver.Address
	for _, name := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv, hs := grpc.NewServer(), health.NewServer()
		testpb.RegisterTestServiceServer(srv, &backend{name: name})
		healthpb.RegisterHealthServer(srv, hs)
		go srv.Serve(ln) //nolint:errcheck // ends with Stop
		defer srv.Stop()
		servers[name], healths[name] = srv, hs
		addrs = append(addrs, resolver.Address{Addr: ln.Addr().String()})
	}

	// A real client would dial "dns:///fleet.internal:50051"; the manual
	// resolver stands in for DNS here.
	r := manual.NewBuilderWithScheme("example")
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient("example:///fleet",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithChainUnaryInterceptor(grpclb.UnaryClientInterceptor(grpclb.RetryPolicy{MaxAttempts: 3})))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := func(user string) (string, error) {
		resp, err := client.UnaryCall(metadata.AppendToOutgoingContext(ctx, "x-user", user), &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		return resp.GetHostname(), err
	}
	// Wait until every backend is connected: calls without the key
	// spread at random.
	seen := map[string]bool{}
	for i := 0; len(seen) < len(names); i++ {
		if i > 10000 {
			return fmt.Errorf("backends not ready: %v", seen)
		}
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		if err != nil {
			return err
		}
		seen[resp.GetHostname()] = true
	}
	fmt.Fprintln(w, "connected to", len(seen), "backends")

	home, err := call("ann")
	if err != nil {
		return err
	}
	same := true
	for range 10 {
		again, err := call("ann")
		if err != nil {
			return err
		}
		same = same && again == home
	}
	fmt.Fprintln(w, "user ann: 11 calls on one backend:", same)

	// ann's backend says NOT_SERVING: once the health stream delivers it,
	// her calls move, and no call fails meanwhile.
	healths[home].SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	moved, failed := "", 0
	for i := 0; moved == "" || moved == home; i++ {
		if i > 10000 {
			return fmt.Errorf("ann never moved off %s", home)
		}
		if moved, err = call("ann"); err != nil {
			failed++
		}
	}
	fmt.Fprintln(w, "NOT_SERVING: ann moved to another backend; failed calls:", failed)

	// Her new backend stops abruptly: gRPC retries what was in flight and
	// the balancer picks among the one left.
	servers[moved].Stop()
	failed = 0
	for range 20 {
		if _, err := call("ann"); err != nil {
			failed++
		}
	}
	fmt.Fprintln(w, "stopped:", 20-failed, "of 20 calls succeeded")
	return nil
}
