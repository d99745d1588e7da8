// Package discovery finds the members of a balancer.Pool and keeps the
// pool in step with them: host names re-resolved on an interval, DNS
// A/AAAA and SRV records re-resolved on their TTL, a members file watched
// for changes, and (in package discovery/etcd) a key prefix in etcd
// watched for changes, with leases for backends that register
// themselves.
//
// # One path into the pool
//
// A Source reports complete member sets to a Sink; a Syncer merges the
// sets of several sources (first source wins on a duplicate address) and
// calls balancer.Pool.Set when the union changes. Membership therefore
// flows through the pool only: a health.Checker that follows the pool
// (health.Checker.Follow) probes a member from the moment it joins and
// stops when it leaves, a member that joins a pool in service
// slow-starts, and every front-end serving from the pool (redirect,
// dnslb, proxy, iplb, l2lb) follows discovery with no other call.
//
//	pool := balancer.MustNew(balancer.Config{Name: "web", Builder: maglev.Builder{}})
//	checker.Follow(pool, health.Template{Probe: health.HTTP{Path: "/healthz"}})
//	srv, _ := discovery.NewDNS(discovery.DNSConfig{Name: "_http._tcp.web.example.test", Type: "SRV"})
//	go discovery.Sync(ctx, pool, srv)
//
// # Failures never empty a pool
//
// A source that cannot learn its members (a DNS server that does not
// answer, a file that does not parse, etcd out of reach) reports the
// failure through Sink.Fail and the Syncer keeps the source's last set;
// failures are logged with the pool's name (pool=NAME) and the source's.
// A DNS answer with no records counts as a failure unless
// DNSConfig.AllowEmpty is set. An empty set reported on purpose (a file
// holding [], an etcd prefix with no keys) does empty the source's part
// of the pool.
//
// # Configuration
//
// Each source has a Config struct whose fields carry yaml and json tags
// (snake_case), so a configuration file can embed them:
//
//	static:  {members: [{addr: "localhost:9101"}, {addr: "web-1.example.test:80", weight: 2}], interval: 30s}
//	dns:     {name: _http._tcp.web.example.test, type: SRV, servers: ["127.0.0.53"], min_ttl: 1s, max_ttl: 5m}
//	file:    {path: /etc/lbkit/web.yaml}
//	etcd:    {endpoints: ["http://127.0.0.1:2379"], prefix: /lbkit/pools/web/}
//
// The members file and etcd values use Member: addr, weight, zone, meta.
package discovery
