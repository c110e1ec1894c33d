// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Packet drops for flowlens: a tp_btf program on the kernel's kfree_skb
// tracepoint (skb, location, reason, rx_sk) that counts every drop per
// reason, keeps only the reasons that mean a lost packet, bounds the
// events it passes up per CPU, and writes each passed drop's 5-tuple and
// reason to a ring buffer.
//
// No vmlinux.h: the few sk_buff fields read are declared below with
// preserve_access_index, so their offsets are relocated (CO-RE) against the
// running kernel's BTF at load time.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define IPPROTO_SCTP 132

#define MAX_EXT_HDRS 4

// Reason slots of the per-reason counters: core reasons (enum
// skb_drop_reason below SKB_DROP_REASON_MAX) by value, subsystem reasons
// (the subsystem id in the upper 16 bits: mac80211, openvswitch...) one slot
// per subsystem after them. Go names each slot from the kernel's BTF.
#define CORE_SLOTS 256
#define SUBSYS_SLOTS 16
#define SLOTS (CORE_SLOTS + SUBSYS_SLOTS)

// Event flags.
#define EV_NO_TUPLE 0x1  // an IP packet whose headers could not be read
#define EV_NOT_IP 0x2    // a network packet of another protocol (ARP...)
#define EV_FRAGMENT 0x4  // a non-first fragment: ports unknown (0)

// The sk_buff fields the program reads. In the kernel they sit in
// anonymous structs and unions; CO-RE finds them by name.
// net_device: only the name, to recognise the traffic mirror's capture
// interfaces.
struct net_device {
	char name[16];
} __attribute__((preserve_access_index));

struct sk_buff {
	struct net_device *dev;
	unsigned char *head;
	__u16 transport_header;
	__u16 network_header;
	__u16 mac_header;
	__be16 protocol;
} __attribute__((preserve_access_index));

struct iphdr_min {
	__u8 ihl_version;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct ipv6hdr_min {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ext_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct l4_min {
	// TCP, UDP, SCTP: ports; ICMP: type, code, checksum, identifier.
	__be16 a;
	__be16 b;
	__be16 c;
};

// drop_event is one passed drop as Go reads it (bpfDropEvent). Addresses
// are 16 bytes, IPv4 v4-mapped as in flow.Tuple; ports in host order. For
// ICMP sport is the identifier and dport type<<8|code, raw: Go maps them
// to conntrack's convention.
struct drop_event {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 flags;
	__u16 l3proto; // skb->protocol, host order
	__u32 reason;
	__u32 pad;
	// When the packet was dropped (bpf_ktime_get_ns, CLOCK_MONOTONIC): Go
	// compares it with a connection's start, so a drop read from the ring
	// after a new connection took the tuple is not given to it.
	__u64 ktime_ns;
};

// counters, one per-CPU element: per reason slot, the drops that passed
// the filter, those the filter dropped (normal paths, noise), those over
// the rate bound, and those the full ring refused; plus the drops of
// buffers that were never network packets (skb->protocol 0: unix,
// netlink), which are not counted per reason.
struct counters {
	__u64 passed[SLOTS];
	__u64 filtered[SLOTS];
	__u64 limited[SLOTS];
	__u64 ring_full[SLOTS];
	__u64 not_network;
	__u64 capture_copies;
};

// bucket is the per-CPU rate bound (GCRA, a token bucket kept as the
// theoretical arrival time of the next event): an event is passed when
// tat - now <= burst_ns, and then moves tat by interval_ns.
struct bucket {
	__u64 tat;
};

// Set by Go before load. keep is a bitmap over core reason values (a
// subsystem reason is kept when keep_subsys is set); interval_ns is
// 1e9/rate, burst_ns interval_ns*burst.
volatile const __u64 keep[CORE_SLOTS / 64] = {};
volatile const __u8 keep_subsys = 1;
volatile const __u64 interval_ns = 200000;
volatile const __u64 burst_ns = 200000000;
// wakeup_bytes: the reader is woken only when the ring holds more than
// this; otherwise it drains the ring on its own timer. A wakeup per event
// (the default) costs the reader a scheduling round per drop.
volatile const __u64 wakeup_bytes = 1 << 16;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18); // Go sets it from Config.RingBytes
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(max_entries, 1);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct bucket);
	__uint(max_entries, 1);
} buckets SEC(".maps");

static __always_inline int read_l4(unsigned char *p, __u8 proto, struct drop_event *ev)
{
	struct l4_min l4;
	if (bpf_probe_read_kernel(&l4, sizeof(l4), p) != 0)
		return -1;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		ev->sport = bpf_ntohs(l4.a);
		ev->dport = bpf_ntohs(l4.b);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		ev->sport = bpf_ntohs(l4.c);
		ev->dport = bpf_ntohs(l4.a);
		break;
	}
	return 0;
}

// parse reads the packet's tuple from the buffer's network header. The
// transport header is not used: it is unset (~0) on paths before the IP
// layer set it, and for IPv6 it points at the first extension header, not
// necessarily at TCP/UDP; the IP header says where L4 is on every path.
static __always_inline int parse(struct sk_buff *skb, __u16 l3proto, struct drop_event *ev)
{
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	if (!head || nh == 0xffff)
		return -1;
	unsigned char *ip = head + nh;
	if (l3proto == ETH_P_IP) {
		struct iphdr_min h;
		if (bpf_probe_read_kernel(&h, sizeof(h), ip) != 0)
			return -1;
		if ((h.ihl_version >> 4) != 4 || (h.ihl_version & 0xf) < 5)
			return -1;
		ev->saddr[10] = 0xff;
		ev->saddr[11] = 0xff;
		ev->daddr[10] = 0xff;
		ev->daddr[11] = 0xff;
		__builtin_memcpy(&ev->saddr[12], h.saddr, 4);
		__builtin_memcpy(&ev->daddr[12], h.daddr, 4);
		ev->proto = h.protocol;
		if (h.frag_off & bpf_htons(0x1fff)) {
			ev->flags |= EV_FRAGMENT;
			return 0;
		}
		if (read_l4(ip + (h.ihl_version & 0xf) * 4, h.protocol, ev) != 0)
			ev->flags |= EV_NO_TUPLE;
		return 0;
	}
	struct ipv6hdr_min h6;
	if (bpf_probe_read_kernel(&h6, sizeof(h6), ip) != 0)
		return -1;
	if ((h6.vtc_flow & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
		return -1;
	__builtin_memcpy(ev->saddr, h6.saddr, 16);
	__builtin_memcpy(ev->daddr, h6.daddr, 16);
	__u8 next = h6.nexthdr;
	__u32 off = sizeof(h6);
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		if (next == IPPROTO_FRAGMENT) {
			struct { __u8 nexthdr; __u8 res; __be16 frag_off; } fh;
			if (bpf_probe_read_kernel(&fh, sizeof(fh), ip + off) != 0)
				goto trunc;
			if (fh.frag_off & bpf_htons(0xfff8)) {
				ev->proto = fh.nexthdr;
				ev->flags |= EV_FRAGMENT;
				return 0;
			}
			next = fh.nexthdr;
			off += 8;
			continue;
		}
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_AH)
			break;
		struct ext_hdr_min eh;
		if (bpf_probe_read_kernel(&eh, sizeof(eh), ip + off) != 0)
			goto trunc;
		off += next == IPPROTO_AH ? ((__u32)eh.hdrlen + 2) * 4 : ((__u32)eh.hdrlen + 1) * 8;
		next = eh.nexthdr;
	}
	ev->proto = next;
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	    next == IPPROTO_AH || next == IPPROTO_FRAGMENT)
		goto trunc;
	if (off > 2048 || read_l4(ip + off, next, ev) != 0)
		goto trunc;
	return 0;
trunc:
	ev->flags |= EV_NO_TUPLE;
	return 0;
}

// rate_ok is the per-CPU bound. Tracing programs do not nest on one CPU
// (the kernel skips and counts a recursive run), so the plain update is
// not racy.
static __always_inline int rate_ok(void)
{
	__u32 zero = 0;
	struct bucket *b = bpf_map_lookup_elem(&buckets, &zero);
	if (!b)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 tat = b->tat;
	if (tat < now)
		tat = now;
	if (tat - now > burst_ns)
		return 0;
	b->tat = tat + interval_ns;
	return 1;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_drop, struct sk_buff *skb, void *location, __u32 reason)
{
	__u32 zero = 0;
	struct counters *c = bpf_map_lookup_elem(&stats, &zero);
	if (!c)
		return 0;
	__u32 slot;
	int kept;
	if (reason < CORE_SLOTS) {
		slot = reason;
		kept = (keep[slot / 64] >> (slot % 64)) & 1;
	} else {
		__u32 sub = reason >> 16;
		slot = CORE_SLOTS + (sub < SUBSYS_SLOTS ? sub : SUBSYS_SLOTS - 1);
		kept = keep_subsys;
	}
	if (slot >= SLOTS)
		return 0;
	if (!kept) {
		c->filtered[slot]++;
		return 0;
	}
	__u16 l3proto = bpf_ntohs(skb->protocol);
	if (l3proto == 0) {
		c->not_network++;
		return 0;
	}
	// Copies the traffic mirror sent to Suricata end on its capture pair
	// (dropped at the peer's ingress, or as not for this host): the
	// original went on, nothing was lost. The capture interfaces are
	// named flc* (agentconfig enforces it).
	struct net_device *dev = skb->dev;
	if (dev) {
		char name[4] = {};
		bpf_probe_read_kernel(name, 3, dev->name);
		if (name[0] == 'f' && name[1] == 'l' && name[2] == 'c') {
			c->capture_copies++;
			return 0;
		}
	}
	c->passed[slot]++;
	if (!rate_ok()) {
		c->limited[slot]++;
		return 0;
	}
	struct drop_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		c->ring_full[slot]++;
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->reason = reason;
	ev->l3proto = l3proto;
	ev->ktime_ns = bpf_ktime_get_ns();
	if (l3proto == ETH_P_IP || l3proto == ETH_P_IPV6) {
		if (parse(skb, l3proto, ev) != 0)
			ev->flags |= EV_NO_TUPLE;
	} else {
		ev->flags |= EV_NOT_IP;
	}
	__u64 wake = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										    : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(ev, wake);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Emits struct drop_event into the object's BTF for bpf2go (-type).
const struct drop_event *unused_drop_event __attribute__((unused));
