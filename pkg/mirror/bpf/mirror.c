// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Traffic mirror for flowlens: a TC/TCX program on the host side of an
// opted-in pod's interface that copies every packet, both directions, to
// the egress of the agent's capture veth, where Suricata reads the peer.
//
// It never changes the packet's fate: it returns TC_ACT_UNSPEC, which is
// TCX_NEXT under TCX and "continue with the next filter" for cls_bpf, so
// the CNI's own programs and filters on the interface still run.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2

// Per-CPU statistics slots (Go: stat* constants, same order).
#define STAT_COPIED 0
#define STAT_FAILED 1
#define STAT_NO_TARGET 2
#define STAT_MAX 3

// target[0] is the capture interface's ifindex; 0 until the agent sets it.
// A map rather than a load-time constant: a recreated capture veth only
// needs the value rewritten, not the program reloaded and re-attached.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} target SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1; // per-CPU: no other writer
}

// The function name is the program's kernel name: the agent recognises its
// own TCX attachments by it after a restart (at most 15 characters).
SEC("tc")
int fl_mirror(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&target, &k);
	if (!ifindex || *ifindex == 0) {
		stat_inc(STAT_NO_TARGET);
		return TC_ACT_UNSPEC;
	}
	// Flags 0: the copy leaves through the capture veth's egress; at tc
	// ingress the helper puts the MAC header back first.
	if (bpf_clone_redirect(skb, *ifindex, 0) == 0)
		stat_inc(STAT_COPIED);
	else
		stat_inc(STAT_FAILED);
	return TC_ACT_UNSPEC;
}

// fl_capdrop ends every copy at the capture peer's tc ingress, after
// af-packet (Suricata) has seen it and before the node's own stack could
// process it: a mirrored broadcast or ARP request must not reach the
// node's sockets or neighbour table. The tc mechanism needs it too: this
// kernel family has no gact action.
SEC("tc")
int fl_capdrop(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
