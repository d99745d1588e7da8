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

/* What the program needs of a frame. */
struct packet {
	struct flow_key flow;
	__u8 tcp_flags; /* zero for UDP */
};

/* parse_l4 reads the ports (and TCP flags) of the TCP or UDP header at l4. */
static __always_inline int parse_l4(void *l4, void *data_end, __u8 proto, struct packet *p)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		p->flow.sport = tcp->source;
		p->flow.dport = tcp->dest;
		p->tcp_flags = tcp->flags;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return -1;
		p->flow.sport = udp->source;
		p->flow.dport = udp->dest;
	} else {
		return -1;
	}
	p->flow.proto = proto;
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
		p->flow.family = 4;
		p->flow.src[10] = 0xff;
		p->flow.src[11] = 0xff;
		__builtin_memcpy(&p->flow.src[12], &ip->saddr, 4);
		p->flow.dst[10] = 0xff;
		p->flow.dst[11] = 0xff;
		__builtin_memcpy(&p->flow.dst[12], &ip->daddr, 4);
		return parse_l4((void *)ip + ihl, data_end, ip->protocol, p);
	}
	if (eth->h_proto == l2lb_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if ((ip6->ver_tc >> 4) != 6)
			return -1;
		p->flow.family = 6;
		__builtin_memcpy(p->flow.src, ip6->saddr, 16);
		__builtin_memcpy(p->flow.dst, ip6->daddr, 16);
		return parse_l4(ip6 + 1, data_end, ip6->nexthdr, p);
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
static __always_inline __u64 flow_hash(const struct flow_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = FLOW_HASH_SEED;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 8); i++)
		h = mix64(h ^ w[i]);
	return h;
}

#endif
