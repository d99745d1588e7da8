/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The BPF helpers the l2lb program calls, declared as libbpf's generated
 * bpf_helper_defs.h declares them (the numbers are the kernel's stable
 * helper IDs from enum bpf_func_id). bpf_helpers.h includes this file; the
 * full libbpf version declares all 211 helpers. */
#ifndef L2LB_BPF_HELPER_DEFS_H
#define L2LB_BPF_HELPER_DEFS_H

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;

#endif
