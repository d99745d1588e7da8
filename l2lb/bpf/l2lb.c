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
 * service's Maglev ring, so a new connection follows the current ring;
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

	struct packet pkt = {};
	if (parse_packet(data, data_end, &pkt) < 0)
		goto pass;

	struct vip_key vk = {};
	__builtin_memcpy(vk.addr, pkt.flow.dst, 16);
	vk.port = pkt.flow.dport;
	vk.proto = pkt.flow.proto;
	vk.family = pkt.flow.family;
	struct service *svc = bpf_map_lookup_elem(&services, &vk);
	if (!svc)
		goto pass;
	__u32 sid = svc->id;
	count(bpf_map_lookup_elem(&service_stats, &sid), len);

	struct backend *be = 0;
	__u32 id = 0;
	int syn = pkt.flow.proto == IPPROTO_TCP &&
		  (pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (!syn) {
		__u32 *cached = bpf_map_lookup_elem(&conns, &pkt.flow);
		if (cached) {
			id = *cached;
			be = backend_ok(id, sid);
			if (be)
				g->conn_hits++;
			else
				g->conn_repicks++;
		} else {
			g->conn_misses++;
		}
	} else {
		g->conn_misses++;
	}
	if (!be) {
		__u32 slot = sid * RING_SIZE + (__u32)(flow_hash(&pkt.flow) % RING_SIZE);
		__u32 *ring = bpf_map_lookup_elem(&rings, &slot);
		if (!ring)
			goto no_backend;
		id = *ring;
		be = backend_ok(id, sid);
		if (!be)
			goto no_backend;
		bpf_map_update_elem(&conns, &pkt.flow, &id, BPF_ANY);
	}

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto pass;
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->mac, ETH_ALEN);
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
