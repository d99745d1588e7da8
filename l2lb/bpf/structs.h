/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Map keys and values shared by the l2lb program and its Go control plane.
 * bpf2go generates the Go types from this file's BTF (l2lbVipKey,
 * l2lbBackend, ...), so nothing here is mirrored by hand in Go. */
#ifndef L2LB_STRUCTS_H
#define L2LB_STRUCTS_H

#include "types.h"

/* RING_SIZE is the number of slots of each service's Maglev table: a
 * prime, maglev.DefaultSize. Ring slot i of service s lives at index
 * s * RING_SIZE + i of the rings map. */
#define RING_SIZE 65537

/* Default map sizes; the control plane sets the real ones at load time. */
#define MAX_SERVICES 16
#define VIP_TABLE_BITS 7 /* log2 of the VIP table's slots: 8 per service */
#define MAX_BACKENDS 1024
#define CONN_TABLE_SIZE 65536

/* FLOW_HASH_SEED starts the flow hash. It is a constant so every balancer
 * of a fleet hashes a flow alike. */
#define FLOW_HASH_SEED 0x6c326c62666c6f77ULL /* "l2lbflow" */

/* VIP_PROBES bounds the VIP table's linear probing: the control plane
 * stores each service within VIP_PROBES slots of its home slot. */
#define VIP_PROBES 8

/* VIP_HASH_MUL is the VIP table's multiplier (2^64 / golden ratio). */
#define VIP_HASH_MUL 0x9e3779b97f4a7c15ULL

/* backend.flags */
#define BACKEND_UP 1 /* forward to this backend (its MAC is known) */

/* CLIENT_HASH_SEED starts the client hash of services that hash the
 * client's address. */
#define CLIENT_HASH_SEED 0x6c326c62636c6e74ULL /* "l2lbclnt" */

/* service.flags */
#define SERVICE_HASH_CLIENT 1 /* pick by the client's address under mask, not the 5-tuple */

/* config.flags */
#define CONFIG_READY 1  /* the balancer's MAC is set: balance */
#define CONFIG_VIPS_B 2 /* look VIPs up in the second half of the vips map */

/* A virtual service: destination address, port and protocol. IPv4
 * addresses are stored IPv4-mapped (::ffff:a.b.c.d), as Go's
 * netip.Addr.As16 gives them; family tells IPv4 (4) from IPv6 (6). */
struct vip_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* One slot of the VIP table: a virtual service and its id (the index of
 * its ring and counters). A slot whose key.family is 0 is empty. */
struct vip_entry {
	struct vip_key key;
	__u32 service;
};

/* A service's settings, by service id: read only when a flow picks from
 * the ring. */
struct service {
	__u64 mask[2]; /* the bits of the client's address (as flow_key.src) SERVICE_HASH_CLIENT hashes */
	__u32 flags;   /* SERVICE_HASH_CLIENT */
	__u32 pad;
};

/* One backend: where frames for it go. */
struct backend {
	__u8 mac[6];
	__u16 flags; /* BACKEND_UP */
	__u32 service; /* the service the backend belongs to */
};

/* A flow's 5-tuple, the flow hash's input.
 * Addresses as in vip_key; ports in network byte order. */
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
} __attribute__((aligned(8)));

/* The connection table's key: the client's address (as in vip_key) and
 * port (network byte order) and the id of the service the flow is for.
 * The service id stands for the destination address, port and protocol:
 * each service's (VIP, port, protocol) is fixed for the balancer's life,
 * so the key tells flows apart as the 5-tuple does, in 24 bytes rather
 * than 40, which the table hashes and compares on every lookup. */
struct conn_key {
	__u8 src[16];
	__be16 sport;
	__u16 pad;
	__u32 service;
} __attribute__((aligned(8)));

/* The balancer's own settings. */
struct config {
	__u8 mac[6]; /* source MAC of forwarded frames: the interface's */
	__u16 flags; /* CONFIG_READY */
};

/* Packet and byte counters of a service or backend (per CPU). */
struct counters {
	__u64 packets;
	__u64 bytes;
};

/* Counters of every frame the program saw (per CPU). */
struct global_counters {
	__u64 passed;       /* XDP_PASS: not for a virtual service, or not parsed */
	__u64 dropped;      /* XDP_DROP, all causes */
	__u64 no_backend;   /* dropped: the service had no backend up */
	__u64 forwarded;    /* XDP_TX to a backend */
	__u64 conn_hits;    /* forwarded by the connection table */
	__u64 conn_misses;  /* picked from the ring: new flow, or TCP SYN */
	__u64 conn_repicks; /* the cached backend was down: picked again */
	__u64 conn_lost;    /* TCP, not a SYN, no entry: evicted, or older than the program */
};

#endif
