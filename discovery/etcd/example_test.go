package etcd_test

import (
	"context"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/maglev"
	"github.com/lbkit/lbkit/discovery"
	"github.com/lbkit/lbkit/discovery/etcd"
)

// A balancer whose pool holds the backends registered under a prefix.
func ExampleNew() {
	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: maglev.Builder{}})
	defer pool.Close()
	src, err := etcd.New(etcd.Config{
		Endpoints: []string{"http://127.0.0.1:2379"},
		Prefix:    "/lbkit/pools/web/",
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go discovery.Sync(ctx, pool, src)
}

// A backend that registers itself for as long as it runs: when it stops,
// its member is removed at once; when it dies, within ten seconds.
func ExampleRegister() {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	me := balancer.Backend{Addr: netip.MustParseAddrPort("198.18.0.11:8080"), Weight: 2, Meta: map[string]string{"url": "http://198.18.0.11:8080"}}
	go etcd.Register(ctx, c, "/lbkit/pools/web/", me, 10*time.Second)
}
