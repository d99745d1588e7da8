/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The few definitions of the kernel's UAPI (linux/types.h, linux/bpf.h)
 * that the l2lb program uses, written out by hand so that generating it
 * does not depend on the machine's kernel headers. Values are part of the
 * kernel's stable ABI. */
#ifndef L2LB_TYPES_H
#define L2LB_TYPES_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* enum bpf_map_type */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9

/* Flags of bpf_map_update_elem. */
#define BPF_ANY 0

/* enum xdp_action */
#define XDP_ABORTED 0
#define XDP_DROP 1
#define XDP_PASS 2
#define XDP_TX 3

/* The XDP program's context (struct xdp_md in linux/bpf.h). */
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

#endif
