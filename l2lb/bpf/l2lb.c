// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//go:build ignore

/* l2lb: direct server return by MAC rewrite.
 *
 * For a frame to a virtual service (VIP, port, protocol) the program picks
 * a backend, rewrites the destination MAC to the backend's and the source
 * MAC to the balancer's, and sends the frame back out (XDP_TX); the rest of
 * the frame is untouched, so the backend, which holds the VIP on its
 * loopback, answers the client directly. Everything else passes.
 *
 * Picking, as Katran does: a TCP SYN (without ACK) always picks from the
 * service's Maglev ring (at the slot of the flow's hash, or of the
 * client's address for services that hash it), so a new connection
 * follows the current ring;
 * other packets use the connection table first and keep their backend
 * while it is up (also when it is drained: out of the ring, still up); a
 * cached backend that is down (failed) or no longer the service's is
 * picked again from the ring. The Go model (model.go) mirrors this. */

#include "types.h"
#include "bpf_helpers.h"
#include "proto.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline void count(struct counters *c, __u64 bytes)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* vip_home returns the home slot of a destination in the vips map: the
 * top vip_bits bits of ((a[0] ^ a[1] ^ a[2] ^ tail) << 32 | a[3]) *
 * VIP_HASH_MUL, where a[0..3] are the address's four little-endian 32-bit
 * words (given as two 64-bit words) and tail is the vip_key's last word
 * (port, protocol, family).
 * vipHome in Go computes the same. */
static __always_inline __u32 vip_home(const __u64 *addr, __u32 tail)
{
	__u32 hi = (__u32)addr[0] ^ (__u32)(addr[0] >> 32) ^ (__u32)addr[1] ^ tail;
	__u64 x = ((__u64)hi << 32 | addr[1] >> 32) * VIP_HASH_MUL;
	return (__u32)(x >> (64 - vip_bits));
}

/* find_service looks the flow's destination (address, port, protocol)
 * up in the vips table that starts at slot base, probing from its home
 * slot until it finds the key or an empty slot, and returns the service's
 * entry or 0. */
static __always_inline struct vip_entry *find_service(const struct packet *p, __u32 base)
{
	const __u64 *addr = &p->w[2];
	__u32 tail = p->vip_tail;
	__u32 mask = (1u << vip_bits) - 1;
	__u32 slot = vip_home(addr, tail);
	for (int i = 0; i < VIP_PROBES; i++) {
		__u32 k = base + ((slot + i) & mask);
		struct vip_entry *e = bpf_map_lookup_elem(&vips, &k);
		if (!e)
			return 0;
		__u32 etail;
		__builtin_memcpy(&etail, &e->key.port, sizeof(etail));
		if (!etail)
			return 0; /* empty: the end of the run */
		const __u64 *eaddr = (const __u64 *)e->key.addr;
		if (etail == tail && eaddr[0] == addr[0] && eaddr[1] == addr[1])
			return e;
	}
	return 0;
}

/* backend_ok returns the backend id's entry if it may take the service's
 * traffic. */
static __always_inline struct backend *backend_ok(__u32 id, __u32 service)
{
	struct backend *be = bpf_map_lookup_elem(&backends, &id);
	if (!be || !(be->flags & BACKEND_UP) || be->service != service)
		return 0;
	return be;
}

SEC("xdp")
int l2lb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 zero = 0;

	struct global_counters *g = bpf_map_lookup_elem(&global_stats, &zero);
	if (!g)
		return XDP_PASS;
	struct config *cfg = bpf_map_lookup_elem(&lb_config, &zero);
	if (!cfg || !(cfg->flags & CONFIG_READY))
		goto pass;

	struct packet pkt; /* parse_packet writes every byte the program reads */
	if (parse_packet(data, data_end, &pkt) < 0)
		goto pass;

	struct vip_entry *svc = find_service(&pkt, cfg->flags & CONFIG_VIPS_B ? 1u << vip_bits : 0);
	if (!svc)
		goto pass;
	__u32 sid = svc->service;
	count(bpf_map_lookup_elem(&service_stats, &sid), len);

	struct backend *be = 0;
	__u32 id = 0;
	int syn = pkt.proto == IPPROTO_TCP &&
		  (pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	/* Written as whole words, as the flow key (parsing.h). */
	union {
		struct conn_key k;
		__u64 w[3];
	} ck = {.w = {pkt.w[0], pkt.w[1], (pkt.w[4] & 0xffff) | (__u64)sid << 32}};
	if (!syn) {
		__u32 *cached = bpf_map_lookup_elem(&conns, &ck.k);
		if (cached) {
			id = *cached;
			be = backend_ok(id, sid);
			if (be)
				g->conn_hits++;
			else
				g->conn_repicks++;
		} else {
			g->conn_misses++;
			if (pkt.proto == IPPROTO_TCP)
				g->conn_lost++;
		}
	} else {
		g->conn_misses++;
	}
	if (!be) {
		struct service *conf = bpf_map_lookup_elem(&service_conf, &sid);
		__u64 h = conf && (conf->flags & SERVICE_HASH_CLIENT) ? client_hash(&pkt, conf->mask) : flow_hash(&pkt);
		__u32 slot = sid * RING_SIZE + (__u32)(h % RING_SIZE);
		__u32 *ring = bpf_map_lookup_elem(&rings, &slot);
		if (!ring)
			goto no_backend;
		id = *ring;
		be = backend_ok(id, sid);
		if (!be)
			goto no_backend;
		bpf_map_update_elem(&conns, &ck.k, &id, BPF_ANY);
	}

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto pass;
	/* Each MAC as a 32- and a 16-bit word rather than six bytes (map
	 * values are 8-byte aligned; frames may be written unaligned). */
	*(__u32 *)&eth->h_dest[0] = *(const __u32 *)&be->mac[0];
	*(__u16 *)&eth->h_dest[4] = *(const __u16 *)&be->mac[4];
	*(__u32 *)&eth->h_source[0] = *(const __u32 *)&cfg->mac[0];
	*(__u16 *)&eth->h_source[4] = *(const __u16 *)&cfg->mac[4];
	count(bpf_map_lookup_elem(&backend_stats, &id), len);
	g->forwarded++;
	return XDP_TX;

no_backend:
	g->no_backend++;
	g->dropped++;
	return XDP_DROP;
pass:
	g->passed++;
	return XDP_PASS;
}
