// Package iplb is layer-3/4 NAT load balancing in the Linux kernel,
// programmed from Go through nftables, like LVS-NAT: a virtual service
// (VIP, port, TCP or UDP, IPv4 or IPv6) is spread over the backends of a
// [balancer.Pool], and the kernel's connection tracking carries each flow
// for its whole life.
//
// # Data plane
//
// A [Balancer] owns one nftables table (inet "lbkit" by default) and
// touches nothing else. For a service "web" on 198.19.0.10:80/tcp with
// backends 198.18.2.11:8080 and 198.18.2.12:8080 it holds, as `nft list
// table inet lbkit` shows it (counter objects left out):
//
//	map web {                     # slot → backend, from lbkit's Maglev table
//	    type mark : ipv4_addr . inet_service
//	    elements = { 0x00000000 : 198.18.2.12 . 8080, 0x00000001 : 198.18.2.11 . 8080, ... }
//	}
//	map web/backends {            # backend → its counter chain
//	    198.18.2.11 . 8080 : jump web/198.18.2.11:8080, ...
//	}
//	chain prerouting {            # type nat hook prerouting priority dstnat
//	    ip daddr 198.19.0.10 tcp dport 80 counter name "web" dnat ip to jhash ip saddr . tcp sport mod 1021 seed 0x5c1d3e27 map @web
//	}
//	chain postrouting {           # type nat hook postrouting priority srcnat
//	    ct state invalid          # never matches; keeps conntrack on (see Lifecycle)
//	    ct original ip daddr 198.19.0.10 ct original proto-dst 80 ip daddr . tcp dport vmap @web/backends
//	    ct original ip daddr 198.19.0.10 ct protocol tcp ct original proto-dst 80 masquerade   # FullNAT only
//	}
//	chain web/198.18.2.11:8080 {
//	    counter name "web/198.18.2.11:8080"
//	}
//
// Only the first packet of a flow passes the nat chains; conntrack
// translates the rest of it and the replies. So a flow stays on its
// backend whatever happens to the map later: changes steer new flows only,
// which is what drain wants. The slot map holds data, not verdicts: the
// kernel re-validates every jump of a table when a verdict map changes,
// at a cost that grows with its size (about 100 ms per change with a
// 65521-slot verdict map against 8-21 ms with this layout, measured with
// 1000 backends on a shared 2-vCPU VM), so jumps are kept to the backend
// map, which changes only with membership.
//
// # Selection
//
// A service's [balancer.Key] says what the kernel hashes, with nft's
// jhash and a per-service seed, into a slot of a Maglev table built by
// [maglev.NewTable] from the pool's ready set and effective weights:
// "flow" hashes the client's address and port (the service fixes the
// rest of the 5-tuple), "client" the client's address under the key's
// prefix length (`jhash ip saddr and 255.255.255.0` for client/24). No
// key takes the slots in turn with `numgen inc`, a weighted round robin.
// A backend owns a share of slots proportional to its weight, and adding
// or removing one moves only its own share of new flows. The kernel sees
// packets, not requests, so header, cookie, path and query keys fall back
// to the client address, as they do in every front-end that cannot see
// them. When the ready set changes and the table size does not, only the
// slots [maglev.Table.Diff] reports are rewritten. The table size is a
// prime chosen from the member count: the smallest of 251, 1021, 4093,
// 16381 and 65521 with at least 100 slots per backend (1021 for 3 to 10
// backends), or set per service. Maglev is not perfectly minimal:
// removing one of 20 backends moves 1.3× its share of slots at 4093
// slots, 1.14× at 16381, 1.06× at 65521. The pool's own policy
// (its Builder) is not used: the kernel applies its own table, so any
// pool works.
//
// [Balancer.Lookup] answers which backend a client address and port gets,
// from the same jhash and scaling the kernel applies (checked against the
// kernel's real choices in the lab tests).
//
// # Modes
//
// In Gateway mode the balancer only rewrites the destination (DNAT). The
// backends must route their replies back through the balancer (it is
// their gateway, with net.ipv4.ip_forward=1 and net.ipv6.conf.all.forwarding=1
// in its namespace), so conntrack can reverse the translation; backends
// see the client's real address. In FullNAT mode the balancer also
// rewrites the source to its own address (masquerade, or a fixed SNAT
// address), like IPVS FNAT: backends need no special route but see the
// balancer as the client.
//
// # Lifecycle
//
// A [Balancer] is not a listener server: the kernel forwards the
// traffic, and Go only programs it. [New] checks the configuration and
// changes nothing in the kernel. [Balancer.Serve] installs the table with
// the configured services in one atomic batch (replacing a table of the
// same name left by a previous run) and then runs the control loop that
// follows the pools, until its context ends or [Balancer.Shutdown] or
// [Balancer.Close] is called; it then deletes the table and returns nil.
// Cancelling Serve's context means the same as Close. A Balancer never
// closes the pools it was given.
//
// The table matters to established flows too: conntrack translates them
// only while some nftables rule in the namespace needs connection
// tracking (the table's postrouting chain always holds one, `ct state
// invalid`, which never matches). So Close, which deletes the table at
// once, resets the flows still open, while Shutdown drains: it empties
// the prerouting chain (new connections to a VIP reach the balancer
// itself), keeps the table, and waits until conntrack holds no open flow
// of the services (or its context ends) before deleting it.
//
// The table outlives its process: if the process dies without Close
// (a crash, SIGKILL), the kernel goes on forwarding with the table as it
// was, established flows and new ones alike, but frozen: no health
// change, drain or membership change reaches it. A new Balancer with the
// same Config.Table adopts it: Serve replaces it in one batch, so
// forwarding has no gap (a lab test kills the control plane with SIGKILL
// under a stream of new connections and restarts it: none fails).
//
// # Changes
//
// Each change is one atomic nftables batch. A goroutine per service waits
// on its pool's [balancer.Snapshot.Changed] and applies the new snapshot
// at once; a failed batch changes nothing in the kernel and is retried.
// [Balancer.Sync] applies synchronously.
//
// Services themselves change while serving: [Balancer.AddService],
// [Balancer.UpdateService], [Balancer.RemoveService], or
// [Balancer.SetServices] for a whole new set. Each is one batch, so a
// packet meets the old configuration or the new one, never a mix; the
// services that stay are not touched beyond the rewrite of the hook
// chains' rules. Established flows, of kept, changed and removed
// services alike, keep their translation in conntrack until they end:
// only new flows see a change.
//
// Linux only: elsewhere [New] returns [errors.ErrUnsupported].
package iplb
