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
package ecmplab
