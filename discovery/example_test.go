package discovery_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/discovery"
)

// waitLen waits for the pool to publish a snapshot with n members.
func waitLen(pool *balancer.Pool, n int) {
	for s := pool.Snapshot(); len(s.Members) != n; s = pool.Snapshot() {
		<-s.Changed()
	}
}

func printMembers(pool *balancer.Pool) {
	for _, ep := range pool.Snapshot().Members {
		fmt.Printf("  %s weight=%d zone=%q\n", ep.Addr(), ep.Backend().Weight, ep.Zone())
	}
}

// A pool fed by two sources: fixed members and a members file that
// changes while the pool serves.
func Example() {
	dir, err := os.MkdirTemp("", "discovery-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "web.yaml")
	os.WriteFile(path, []byte("- addr: 198.18.0.11:8080\n  weight: 2\n- addr: 198.18.0.12:8080\n"), 0o644)

	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: roundrobin.Builder{}})
	defer pool.Close()
	static, err := discovery.NewStatic(discovery.StaticConfig{Members: []discovery.Member{{Addr: "198.18.0.10:8080", Zone: "local"}}})
	if err != nil {
		panic(err)
	}
	file, err := discovery.NewFile(discovery.FileConfig{Path: path})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		s := &discovery.Syncer{Pool: pool, Sources: []discovery.Source{static, file}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		done <- s.Run(ctx)
	}()

	waitLen(pool, 3)
	fmt.Println("pool", pool.Name())
	printMembers(pool)

	os.WriteFile(path, []byte("- addr: 198.18.0.12:8080\n  weight: 5\n"), 0o644)
	waitLen(pool, 2)
	fmt.Println("after the file changed:")
	printMembers(pool)

	cancel()
	fmt.Println("stopped:", <-done)
	// Output:
	// pool web
	//   198.18.0.10:8080 weight=1 zone="local"
	//   198.18.0.11:8080 weight=2 zone=""
	//   198.18.0.12:8080 weight=1 zone=""
	// after the file changed:
	//   198.18.0.10:8080 weight=1 zone="local"
	//   198.18.0.12:8080 weight=5 zone=""
	// stopped: <nil>
}

// A source of the targets of SRV records, looked up again on their TTL.
func ExampleNewDNS() {
	src, err := discovery.NewDNS(discovery.DNSConfig{
		Name:    "_http._tcp.web.example.test",
		Type:    "SRV",
		Servers: []string{"127.0.0.53"},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(src)
	// Output: dns SRV _http._tcp.web.example.test.
}
