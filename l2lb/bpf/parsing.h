/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Parsing a frame into the flow the l2lb program balances. Every read is
 * bounds-checked against data_end (the verifier insists). The Go model
 * (model.go, ParseFlow) follows the same rules step by step. */
#ifndef L2LB_PARSING_H
#define L2LB_PARSING_H

#include "types.h"
#include "bpf_helpers.h"
#include "proto.h"
#include "structs.h"

/* What the program needs of a frame. The flow key is written as five
 * whole 64-bit words (w), never field by field: the connection table's
 * hash and compare and the flow hash read it back in 32- and 64-bit
 * words, and a load that spans several narrower stores cannot be
 * forwarded from the store buffer (a stall of a dozen cycles or more per
 * word, measured as about 10 ns per frame). */
struct packet {
	union {
		struct flow_key flow;
		__u64 w[5];
	};
	__u32 vip_tail; /* the vip_key's last word: dport | proto << 16 | family << 24 */
	__u8 proto;
	__u8 tcp_flags; /* zero for UDP */
};

/* The little-endian 64-bit word of an IPv4-mapped address's second half
 * (bytes 8-15: 00 00 ff ff a b c d). */
#define MAPPED4(a) (0xffff0000ULL | (__u64)(a) << 32)

/* parse_l4 reads the ports (and TCP flags) of the TCP or UDP header at l4
 * and fills the key's last word: the ports as they are on the wire
 * (source, destination), protocol, family, two zero bytes. */
static __always_inline int parse_l4(void *l4, void *data_end, __u8 proto, __u8 family, struct packet *p)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		p->tcp_flags = tcp->flags;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return -1;
		p->tcp_flags = 0;
	} else {
		return -1;
	}
	__u32 ports = *(__u32 *)l4; /* source, destination port */
	__u64 w4 = ports | (__u64)proto << 32 | (__u64)family << 40;
	p->w[4] = w4;
	p->vip_tail = (__u32)(w4 >> 16);
	p->proto = proto;
	return 0;
}

/* parse_packet fills p from an Ethernet frame carrying TCP or UDP over
 * IPv4 or IPv6 and returns 0; it returns -1 for anything else, which the
 * program passes to the kernel's stack untouched: other EtherTypes (ARP,
 * VLAN-tagged frames), IPv4 with a header length under 20 bytes, IPv4
 * fragments (later fragments carry no ports, so no fragment is balanced),
 * IPv6 with extension headers, other protocols, and frames cut short of
 * the headers it reads. */
static __always_inline int parse_packet(void *data, void *data_end, struct packet *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;

	if (eth->h_proto == l2lb_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		if ((ip->ver_ihl >> 4) != 4)
			return -1;
		__u32 ihl = (ip->ver_ihl & 0x0F) * 4;
		if (ihl < sizeof(*ip))
			return -1;
		if (ip->frag_off & l2lb_htons(IP_MF | IP_OFFSET))
			return -1;
		p->w[0] = 0;
		p->w[1] = MAPPED4(ip->saddr);
		p->w[2] = 0;
		p->w[3] = MAPPED4(ip->daddr);
		return parse_l4((void *)ip + ihl, data_end, ip->protocol, 4, p);
	}
	if (eth->h_proto == l2lb_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if ((ip6->ver_tc >> 4) != 6)
			return -1;
		/* 64-bit loads at 2-byte-aligned offsets: XDP frames may be
		 * read unaligned on the architectures l2lb targets. */
		const __u64 *a = (const __u64 *)ip6->saddr;
		p->w[0] = a[0];
		p->w[1] = a[1];
		p->w[2] = a[2];
		p->w[3] = a[3];
		return parse_l4(ip6 + 1, data_end, ip6->nexthdr, 6, p);
	}
	return -1;
}

/* mix64 is splitmix64's finaliser, as balancer.Mix64 in Go. */
static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* flow_hash hashes the flow key's five little-endian 64-bit words:
 * h = FLOW_HASH_SEED, then h = mix64(h ^ word) for each word in order.
 * The Go model (FlowHash) computes the same. */
static __always_inline __u64 flow_hash(const struct packet *p)
{
	__u64 h = FLOW_HASH_SEED;
#pragma unroll
	for (int i = 0; i < 5; i++)
		h = mix64(h ^ p->w[i]);
	return h;
}

/* client_hash hashes the client's address under mask (two little-endian
 * 64-bit words of the 16-byte form): h = CLIENT_HASH_SEED, then
 * h = mix64(h ^ (word & mask)) for both words. The Go model (KeyHash)
 * computes the same. */
static __always_inline __u64 client_hash(const struct packet *p, const __u64 *mask)
{
	__u64 h = CLIENT_HASH_SEED;
	h = mix64(h ^ (p->w[0] & mask[0]));
	h = mix64(h ^ (p->w[1] & mask[1]));
	return h;
}

#endif
