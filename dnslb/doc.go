// Package dnslb is an authoritative DNS server that load-balances by its
// answers, and a dynamic-DNS client that keeps records on other DNS
// servers in step with a pool's health.
//
// A [Server] is authoritative for one or more [Zone]s given as zone-file
// text and serves [Service] names from a balancer.Pool, the only list of
// members: A, AAAA and SRV answers name the pool's ready backends
// (health, drain, weights and slow start apply) chosen by a [Policy] —
// all of them rotated, the pool picker's choice (so the pool's policy,
// weighted round robin or least connections, decides who is named), the
// same ones per client subnet through the pool's picker with a
// balancer.Key (Maglev, ring hash or rendezvous keep a subnet on its
// backend), or the nearest zone by client subnet with EDNS Client Subnet
// (RFC 7871) scoped answers. Per-member data lives on the member: a
// member's [MetaName] metadata is its SRV target.
//
// It speaks UDP and TCP, EDNS0 with truncation to the client's buffer
// size, follows CNAMEs inside a zone, synthesizes answers from wildcards
// (RFC 4592), refers queries under a delegation to its NS records (AA
// clear, with glue), answers NXDOMAIN and NODATA with the SOA for
// negative caching, refuses names outside its zones (no
// recursion), and limits response rates per client prefix ([RateLimit]).
//
// The serving path parses queries in wire format and copies answers from
// buffers packed ahead of time for each pool snapshot, so a query costs
// no allocation; several UDP sockets share the port with SO_REUSEPORT,
// each with its own read loop.
//
// A server has the lifecycle of every lbkit server: [New] validates,
// [Server.Serve] (or [Server.ListenAndServe]) serves until its context
// ends, [Server.Shutdown] stops gracefully (TCP queries in progress are
// answered) and [Server.Close] stops at once; cancelling Serve's context
// means Close. [Server.Update] swaps zones and services while it serves,
// atomically. A server never closes the pools it was given.
//
// With Config.UpdateKeys set, the server also accepts TSIG-signed RFC
// 2136 UPDATEs that add and remove a service's backends (services opt in
// with Service.UpdatePort).
//
// With Config.TransferPeers set, standard authoritative servers (Knot,
// NSD, BIND) can serve the zones as secondaries: the server answers AXFR
// and IXFR (RFC 5936, RFC 1995) with the zone data and each service's
// current A and AAAA records, TSIG-signed with Config.TransferKeys, and
// sends NOTIFY (RFC 1996) to Config.Notify whenever a service's answers
// change, gathered for Config.NotifyDelay; the SOA serial rises with
// every change and follows the clock, so it never goes back.
//
// A zone with Zone.Keys is signed online (DNSSEC, ECDSA P-256 or
// Ed25519 keys in BIND's file format, see [LoadKey] and [GenerateKey]).
// Queries with the DO bit get RRSIGs; the signatures of a service's
// answers are made the first time a pool snapshot's answer is asked for
// and cached with the snapshot, so the signed fast path copies bytes as
// the unsigned one does. Negative answers use compact denial of
// existence (RFC 4470 minimally covering NSEC, as
// draft-ietf-dnsop-compact-denial-of-existence and Cloudflare do): a
// NODATA answer carries one NSEC at the query name, next name
// "\000.name", listing the types the name has; a name that does not
// exist is answered NOERROR with such an NSEC listing only NXNAME. One
// signature per name proves either, nothing of the zone is enumerable,
// and no ordering of the names is needed, which a zone whose names
// come and go with its pools could not give cheaply. Without DO the
// answers are unsigned and NXDOMAIN stays NXDOMAIN. Transfers carry
// the zone unsigned.
//
// An [Updater] pushes a pool's ready set to an existing authoritative
// server (BIND, Knot, PowerDNS, ...) as RFC 2136 UPDATEs signed with TSIG
// (RFC 8945), touching only the records it owns.
package dnslb
