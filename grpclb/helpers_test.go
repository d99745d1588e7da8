package grpclb_test

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lbkit/lbkit/grpclb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a gRPC backend on loopback with the standard health service.
type server struct {
	addr   netip.AddrPort
	srv    *grpc.Server
	health *health.Server
	calls  atomic.Int64
}

// testService answers UnaryCall with the server's address, or what its
// handler says.
type testService struct {
	testpb.UnimplementedTestServiceServer
	s       *server
	handler func(ctx context.Context) error
}

func (t *testService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	t.s.calls.Add(1)
	if t.handler != nil {
		if err := t.handler(ctx); err != nil {
			return nil, err
		}
	}
	return &testpb.SimpleResponse{Hostname: t.s.addr.String()}, nil
}

// startServer starts a backend whose UnaryCall runs handler (nil: answer
// at once) until the test ends.
func startServer(t testing.TB, handler func(ctx context.Context) error) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &server{addr: netip.MustParseAddrPort(ln.Addr().String()), srv: grpc.NewServer(), health: health.NewServer()}
	testpb.RegisterTestServiceServer(s.srv, &testService{s: s, handler: handler})
	healthpb.RegisterHealthServer(s.srv, s.health)
	go s.srv.Serve(ln) //nolint:errcheck // ends with Stop
	t.Cleanup(s.srv.Stop)
	return s
}

// retryPolicy retries UNAVAILABLE RPCs of the test service.
const retryPolicy = `"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
  "retryPolicy": {"maxAttempts": %d, "initialBackoff": "0.001s", "maxBackoff": "0.005s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]`

// dial returns a client of servers through the lbkit balancer with
// serviceConfig.
func dial(t testing.TB, serviceConfig string, servers ...*server) (*grpc.ClientConn, testpb.TestServiceClient) {
	t.Helper()
	return dialRetry(t, grpclb.RetryPolicy{}, serviceConfig, servers...)
}

// dialRetry is dial with the interceptor's own retries.
func dialRetry(t testing.TB, retry grpclb.RetryPolicy, serviceConfig string, servers ...*server) (*grpc.ClientConn, testpb.TestServiceClient) {
	t.Helper()
	return dialWith(t, retry, serviceConfig, nil, servers...)
}

// dialWith is dialRetry with more dial options.
func dialWith(t testing.TB, retry grpclb.RetryPolicy, serviceConfig string, more []grpc.DialOption, servers ...*server) (*grpc.ClientConn, testpb.TestServiceClient) {
	t.Helper()
	r := manual.NewBuilderWithScheme("lbkit-test")
	var addrs []resolver.Address
	for _, s := range servers {
		addrs = append(addrs, resolver.Address{Addr: s.addr.String()})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	cc, err := grpc.NewClient("lbkit-test:///fleet", append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithChainUnaryInterceptor(grpclb.UnaryClientInterceptor(retry)),
	}, more...)...)
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return cc, testpb.NewTestServiceClient(cc)
}
