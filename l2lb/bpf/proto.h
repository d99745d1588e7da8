/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Wire formats of the headers the l2lb program reads (Ethernet, IPv4,
 * IPv6, TCP, UDP), written by hand from the RFCs so that generating the
 * program does not depend on the machine's kernel headers. Multi-byte
 * fields are in network byte order. */
#ifndef L2LB_PROTO_H
#define L2LB_PROTO_H

#include "types.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "l2lb is built for little-endian BPF (bpfel) only"
#endif

/* Host to network byte order for constants and values (bpfel only). */
#define l2lb_htons(x) ((__be16)__builtin_bswap16((__u16)(x)))

#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* IPv4 fragment bits of frag_off (host order): more fragments, offset. */
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

struct ethhdr {
	__u8 h_dest[ETH_ALEN];
	__u8 h_source[ETH_ALEN];
	__be16 h_proto;
} __attribute__((packed));

struct iphdr {
	__u8 ver_ihl; /* version (high nibble), header length in words (low) */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6hdr {
	__u8 ver_tc; /* version (high nibble), traffic class (high bits) */
	__u8 tc_flow;
	__be16 flow_lbl;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res; /* data offset (high nibble) */
	__u8 flags;    /* CWR ECE URG ACK PSH RST SYN FIN */
	__be16 window;
	__u16 check;
	__be16 urg_ptr;
};

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

#endif
