// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// DNS responses on pod traffic, for flowlens' destination names: a
// direct-action TC/TCX program on the host side of pod-facing interfaces,
// at egress (the packet is about to enter the pod), that passes answered
// UDP DNS responses up to the agent through a ring buffer: the packet's
// addresses and ports plus a bounded copy of the DNS message. It only
// looks: every packet goes on with TC_ACT_UNSPEC.
//
// Only egress of the host-side veth: a response a pod receives crosses it
// exactly once, whether the server is another pod of the node (whose own
// interface's ingress would show the same response a second time), a
// node-local cache or a server outside the node. (A CNI that delivers
// with bpf_redirect_peer skips this egress: see the Go package's Limits.)
//
// Like the flow counters, it reads only the packet and struct __sk_buff, so
// it builds from linux/bpf.h and needs no CO-RE.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Under TCX, TCX_NEXT: the programs and tc filters after this one (a
// CNI's, the flow counters, a traffic mirror) still run.
#define TC_ACT_UNSPEC (-1)

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define DNS_PORT 53
#define DNS_HDR_LEN 12
#define UDP_HDR_LEN 8

// MAX_PAYLOAD bounds the copy of a DNS message: 1232 bytes, the EDNS
// buffer size resolvers settled on (DNS flag day 2020) to avoid IP
// fragmentation, so a UDP response a resolver sends fits whole. A longer
// one is copied up to the bound and counted (STAT_TRUNCATED); the agent
// uses the answers that fit.
#define MAX_PAYLOAD 1232

// Per-CPU statistics slots (Go: stat* constants, same order).
#define STAT_EVENTS 0       // responses written to the ring
#define STAT_RING_FULL 1    // responses the full ring refused
#define STAT_RATE_LIMITED 2 // responses over the per-CPU rate bound
#define STAT_TRUNCATED 3    // passed-up messages longer than MAX_PAYLOAD (copied in part)
#define STAT_SEGS_SKIPPED 4 // GSO/GRO packets with datagrams beyond MAX_SEGS (not read)
#define STAT_MAX 5

// MAX_SEGS bounds the datagrams read from one UDP GSO/GRO packet: UDP GRO
// merges at most 64.
#define MAX_SEGS 64

// max_per_sec is the per-CPU bound on responses passed up per second
// (Config.MaxResponsesPerSecond); Go sets it before loading.
volatile const __u64 max_per_sec = 10000;

// wake_bytes: the ring's fill level past which a record wakes the reader
// (Go: a quarter of Config.RingBytes). Below it records are written
// without a wakeup and the reader drains the ring every poll interval: a
// wakeup per response (the default once the reader has caught up, which
// at a steady rate it always has) costs an irq_work in the kernel and a
// scheduler round trip in the agent for each one.
volatile const __u64 wake_bytes = 1 << 18;

struct event {
	__u8 saddr[16]; // the response's source (the DNS server), IPv4 v4-mapped
	__u8 daddr[16]; // its destination (the client pod)
	__u16 sport;    // host order
	__u16 dport;
	__u16 msg_len;  // the DNS message's length as the UDP header gives it
	__u16 copied;   // bytes of it in payload
	__u32 ifindex;
	__u8 payload[MAX_PAYLOAD];
};

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

struct udphdr_min {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__be16 check;
};

struct dnshdr_min {
	__be16 id;
	__be16 flags;
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

struct rate {
	__u64 window_start;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // Go sets it from Config.RingBytes
} events SEC(".maps");

// scratch holds the event being built: it is larger than the 512-byte
// stack, and only the filled part is copied into the ring.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event);
	__uint(max_entries, 1);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct rate);
	__uint(max_entries, 1);
} rate_state SEC(".maps");

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

// rate_ok admits one more response on this CPU in the current one-second
// window. Per CPU so that no two CPUs contend on a shared counter: the
// node-wide bound is max_per_sec times the CPUs receiving responses.
static __always_inline int rate_ok(void)
{
	__u32 zero = 0;
	struct rate *r = bpf_map_lookup_elem(&rate_state, &zero);
	if (!r)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - r->window_start >= 1000000000ULL) {
		r->window_start = now;
		r->count = 0;
	}
	if (r->count >= max_per_sec)
		return 0;
	r->count++;
	return 1;
}

// emit passes up the DNS message of one datagram: len bytes at off in
// the skb. The DNS header is read with bpf_skb_load_bytes, so a message
// in the skb's page fragments (a UDP GSO packet, a driver that pulled only
// the L2-L4 headers into the linear part) is read as well as a linear one.
// ev holds the addresses and ports already.
static __always_inline void emit(struct __sk_buff *skb, struct event *ev, __u32 off, __u32 len)
{
	struct dnshdr_min dns;
	if (len < DNS_HDR_LEN)
		return;
	if (bpf_skb_load_bytes(skb, off, &dns, sizeof(dns)) != 0)
		return;
	// Only answered responses (QR set, RCODE NOERROR, at least one
	// answer) can name an address; the rest stay in the kernel.
	__u16 flags = bpf_ntohs(dns.flags);
	if (!(flags & 0x8000) || (flags & 0x000f) != 0 || dns.ancount == 0)
		return;
	if (!rate_ok()) {
		stat_inc(STAT_RATE_LIMITED);
		return;
	}
	__u32 n = len;
	int truncated = 0;
	if (n > MAX_PAYLOAD) {
		n = MAX_PAYLOAD;
		truncated = 1;
	}
	if (n < DNS_HDR_LEN || n > MAX_PAYLOAD)
		return;
	if (bpf_skb_load_bytes(skb, off, ev->payload, n) != 0)
		return;
	ev->msg_len = len;
	ev->copied = n;

	__u64 wake = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wake_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, ev, offsetof(struct event, payload) + n, wake) != 0) {
		stat_inc(STAT_RING_FULL);
		return;
	}
	stat_inc(STAT_EVENTS);
	// Counted only once passed up: truncated_total says the answers
	// that fit were used, which a response the full ring refused was not.
	if (truncated)
		stat_inc(STAT_TRUNCATED);
}

SEC("tc")
int dns_to_pod(struct __sk_buff *skb)
{
	// L2-L4 headers by direct packet access: most packets are not DNS
	// responses and leave after a few compares, without a helper call.
	// The kernel keeps them in the linear part (GSO and the stack's
	// receive path pull them there); the DNS message itself may be in
	// page fragments and is read with bpf_skb_load_bytes (emit).
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN > end)
		return TC_ACT_UNSPEC;
	__be16 proto = *(__be16 *)(data + 12);
	__u8 saddr[16] = {};
	__u8 daddr[16] = {};
	__u32 l4;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr_min *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return TC_ACT_UNSPEC;
		// A later fragment has no UDP header.
		if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
			return TC_ACT_UNSPEC;
		__u32 ihl = (ip->ihl_version & 0x0f) * 4;
		if (ihl < sizeof(*ip))
			return TC_ACT_UNSPEC;
		l4 = ETH_HLEN + ihl;
		saddr[10] = saddr[11] = daddr[10] = daddr[11] = 0xff;
		__builtin_memcpy(&saddr[12], ip->saddr, 4);
		__builtin_memcpy(&daddr[12], ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr_min *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_UNSPEC;
		// UDP right after the fixed header only: a DNS response with
		// extension headers is not looked at.
		if (ip6->nexthdr != IPPROTO_UDP)
			return TC_ACT_UNSPEC;
		l4 = ETH_HLEN + sizeof(*ip6);
		__builtin_memcpy(saddr, ip6->saddr, 16);
		__builtin_memcpy(daddr, ip6->daddr, 16);
	} else {
		return TC_ACT_UNSPEC;
	}
	if (l4 > 0xff)
		return TC_ACT_UNSPEC;
	struct udphdr_min *udp = data + l4;
	if ((void *)(udp + 1) > end)
		return TC_ACT_UNSPEC;
	if (udp->sport != bpf_htons(DNS_PORT))
		return TC_ACT_UNSPEC;
	__u32 off = l4 + UDP_HDR_LEN;
	__u32 msg_len = bpf_ntohs(udp->len);
	msg_len = msg_len > UDP_HDR_LEN ? msg_len - UDP_HDR_LEN : 0;
	__u32 avail = skb->len > off ? skb->len - off : 0;
	if (msg_len > avail)
		msg_len = avail;
	if (msg_len < DNS_HDR_LEN)
		return TC_ACT_UNSPEC;

	__u32 zero = 0;
	struct event *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return TC_ACT_UNSPEC;
	__builtin_memcpy(ev->saddr, saddr, 16);
	__builtin_memcpy(ev->daddr, daddr, 16);
	ev->sport = DNS_PORT;
	ev->dport = bpf_ntohs(udp->dport);
	ev->ifindex = skb->ifindex;

	// A UDP GSO packet (a sender's UDP_SEGMENT) or a UDP GRO packet
	// (back-to-back responses merged on receive) carries several
	// datagrams under one UDP header whose length is the total: each
	// datagram's payload is gso_size bytes, the last one up to that.
	// Each datagram is its own DNS message, passed up on its own. (A
	// legacy UFO packet, gso_size an IP fragment size, would be split
	// wrongly; veths never carry one: UDP senders lost UFO in 4.14.)
	__u32 seg = skb->gso_size;
	if (seg == 0 || seg >= msg_len) {
		emit(skb, ev, off, msg_len);
		return TC_ACT_UNSPEC;
	}
	__u32 start = 0;
	for (int i = 0; i < MAX_SEGS; i++) {
		if (start >= msg_len)
			return TC_ACT_UNSPEC;
		__u32 len = msg_len - start;
		emit(skb, ev, off + start, len < seg ? len : seg);
		start += seg;
	}
	// UDP GRO merges at most 64 datagrams; a GSO send of more (the
	// kernel allows up to 128) leaves the rest unread, counted.
	if (start < msg_len)
		stat_inc(STAT_SEGS_SKIPPED);
	return TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
