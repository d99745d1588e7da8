// Package ecmplab builds a scale-out lab for privileged tests: several
// balancer nodes behind a router that spreads flows over them with an
// equal-cost multipath (ECMP) route, as a datacenter's top-of-rack router
// spreads a VIP over a fleet of L4 balancers (Maglev, Katran, Unimog).
//
// Every host lives in its own network namespace (built with
// [github.com/lbkit/lbkit/internal/netlab]) on one bridge; nothing touches
// the root namespace, and the addresses come from 198.18.0.0/15:
//
//	client   198.18.1.10, .11, ...   several client addresses; VIP via the router
//	router   198.18.1.1, 198.18.0.1  ip_forward=1, fib_multipath_hash_policy=1 (L4),
//	                                 VIP/32 via a multipath route over the nodes
//	lb1..N   198.18.0.11, .12, ...   the balancer nodes (the tests start l2lb or iplb in them)
//	be1..M   198.18.0.21, .22, ...   backends: a small TCP server on :80, the VIP on lo
//	                                 (arp_ignore=1, arp_announce=2, rp_filter=0),
//	                                 default route via the router
//
// With l2lb (MAC-rewrite direct server return) the backends answer the
// client straight through the router; with iplb in FullNAT mode they
// answer the node that translated the flow, which holds its conntrack
// entry.
//
// A backend's server answers every line it reads with one line, "<name>
// <peer>", where peer is the source address and port it sees: the client's
// under direct server return, the node's under FullNAT, which tells which
// node carried the flow.
//
// # The router's hash
//
// The router hashes the 5-tuple itself: fib_multipath_hash_policy=3 with
// fib_multipath_hash_fields=0x0037 (addresses, protocol, ports). Policy 1
// ("L4") would not do in a veth lab: it reuses a packet's L4 hash when the
// packet has one, and a packet from a local socket carries the socket's
// random txhash across the veth, which TCP redraws on every
// retransmission timeout. The router then spread connections, not
// 5-tuples: a flow re-dialed from the same port took another node 23 times
// in 40, and a SYN retransmitted after a timeout reached a second node,
// which (under FullNAT) made the backend answer twice and the client reset
// the connection. A real router hashes headers (or a NIC's RSS hash of
// them), which policy 3 reproduces.
//
// [Config.Hashing] chooses the route: a classic multipath route
// ([HashThreshold]), whose ranges are redrawn when a nexthop goes, so
// removing the first of three nodes also moves half of the second's flows
// to the third; or a resilient nexthop group ([Resilient], nexthop objects
// sent over netlink), where only the removed node's flows move.
//
// # Results
//
// The tests (run as root) prove the stateless agreement: three nodes, each
// with its own pool of the same members in a different order, send every
// flow to the backend the Go model predicts (l2lb: [github.com/lbkit/lbkit/l2lb.FlowHash] into the
// Maglev table built from the member set; iplb: every node's
// [github.com/lbkit/lbkit/iplb.Balancer.Lookup], all equal), whichever node ECMP picks, and the
// same 5-tuple reaches the same backend through each node in turn.
//
// They then kill one node under 600 established connections (its XDP
// program or nftables table removed, its nexthop removed) and count the
// connections still answered by their backend. Measured on a 2-vCPU VM:
//
//	data plane               router ECMP     scenario            survived
//	l2lb (XDP, DSR)          hash-threshold  kill lb1            100 %
//	l2lb (XDP, DSR)          resilient       kill lb1            100 %
//	l2lb (XDP, DSR)          hash-threshold  kill lb1 + add be4  84-88 %
//	l2lb (XDP, DSR)          resilient       kill lb1 + add be4  91-93 %
//	iplb (nftables, FullNAT) hash-threshold  kill lb1            45-53 %
//	iplb (nftables, FullNAT) resilient       kill lb1            63-70 %
//
// (ranges over several runs of 600 connections; every broken connection
// was reset at once, none hung.)
//
// l2lb keeps every connection while the backend set is unchanged: a moved
// flow misses the new node's connection table and picks from the same
// Maglev table, so it reaches the same backend. When a backend joins at
// the same moment, a moved flow whose ring slot now names the new backend
// is sent there and reset (about a quarter of the moved flows with 3 → 4
// backends); flows that stay on their node keep their backend through the
// connection table. Katran behaves alike; only shared connection state (or
// a backend-side redirect) would save those flows.
//
// iplb needs conntrack on the node that translated the flow. Gateway mode
// cannot work behind ECMP at all (a backend's replies go to its one
// gateway, not to the node ECMP chose), so the lab uses FullNAT: the node
// rewrites the source to its own address and the backend answers it.
// Every node picks the same backend for a moved flow, but the flow now
// reaches that backend from another node's address, which the backend
// does not know, and it resets the connection: none of the killed node's
// flows survive, and with hash-threshold routing neither do the flows the
// redrawn ranges move between surviving nodes. Only a resilient group
// keeps the rest (two thirds). Keeping a NAT node's flows through its
// failure takes conntrack state synchronisation between the nodes
// (conntrackd), not a hash.
package ecmplab
