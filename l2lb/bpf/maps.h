/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The l2lb program's maps. The control plane resizes them at load time
 * (max_entries) from its Config; the sizes here are defaults. */
#ifndef L2LB_MAPS_H
#define L2LB_MAPS_H

#include "types.h"
#include "bpf_helpers.h"
#include "structs.h"

/* Virtual services: (VIP, port, protocol) to service id, an open-addressed
 * hash table in an array (linear probing from the slot vip_home names, at
 * most VIP_PROBES slots), so that a lookup costs a multiply and inlined
 * array reads rather than a hash map's jhash and call; frames to other
 * destinations usually end at their first, empty slot. Each table has
 * 2^vip_bits slots, at least 8 per service, so runs stay short.
 *
 * The map holds two tables: slots [0, 2^vip_bits) and [2^vip_bits,
 * 2^(vip_bits+1)). The program reads the one config.flags names
 * (CONFIG_VIPS_B); the control plane writes the other whole, then flips
 * the flag, so a frame meets the old set of services or the new one,
 * never a table half written. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct vip_entry);
	__uint(max_entries, 2 << VIP_TABLE_BITS);
} vips SEC(".maps");

/* log2 of the vips map's size; the control plane sets it at load time. */
volatile const __u32 vip_bits = VIP_TABLE_BITS;

/* Maglev tables, RING_SIZE slots per service: slot to backend id.
 * Backend id 0 is reserved and never up: an empty service's ring is all 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAX_SERVICES * RING_SIZE);
} rings SEC(".maps");

/* Service settings by service id (struct service). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct service);
	__uint(max_entries, MAX_SERVICES);
} service_conf SEC(".maps");

/* Backends by id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, MAX_BACKENDS);
} backends SEC(".maps");

/* The connection table: flow (struct conn_key) to backend id. One LRU hash shared by every
 * CPU rather than an LRU per CPU: in generic XDP (and with senders that
 * migrate between CPUs, as on veth) one flow's packets are processed on
 * several CPUs, and per-CPU tables would each pick, and could disagree
 * after a ring change. Lookups are lock-free; only new flows write. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct conn_key);
	__type(value, __u32);
	__uint(max_entries, CONN_TABLE_SIZE);
} conns SEC(".maps");

/* The balancer's settings: one entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(max_entries, MAX_SERVICES);
} service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(max_entries, MAX_BACKENDS);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct global_counters);
	__uint(max_entries, 1);
} global_stats SEC(".maps");

#endif
