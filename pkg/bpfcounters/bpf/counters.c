// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Flow counters for flowlens: direct-action TC/TCX programs on the host side
// of pod-facing interfaces, counting packets and bytes per 5-tuple, hook and
// direction, with a ring of "changed since the agent's last read" keys.
//
// The program needs no CO-RE: it reads only the packet and the stable UAPI
// struct __sk_buff, so it is built from linux/bpf.h plus the minimal header
// structs below and does not depend on vmlinux.h.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// TC_ACT_UNSPEC: "no verdict, go on". Under TCX it is TCX_NEXT, so the
// programs attached after this one and the legacy tc filters (a CNI's, a
// traffic mirror's) still run; TC_ACT_OK would be TCX_PASS and end the
// chain here. In a tc direct-action filter it also lets the next filter run.
#define TC_ACT_UNSPEC (-1)

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132

#define TCP_FIN 0x01
#define TCP_RST 0x04

// VAL_INCOMPLETE, in flow_val.tcp_flags above the 8 TCP flag bits: the key
// counted a packet whose datagram conntrack accounts differently (a first
// fragment, whose later fragments are counted under ports 0; an IPv6
// routing, destination-options or AH header). Go reports the connection
// Lossy, so the agent keeps conntrack's totals for it.
#define VAL_INCOMPLETE 0x100

// MAX_EXT_HDRS bounds the IPv6 extension-header walk; a longer chain is a
// parse failure, counted under the last header reached with ports 0.
#define MAX_EXT_HDRS 6

// Hooks, as seen from the host side of the pod's interface.
#define HOOK_FROM_POD 0 // host-side ingress: the pod sent it
#define HOOK_TO_POD 1   // host-side egress: the pod receives it

// Ring record kinds.
#define REC_CHANGED 1
#define REC_FIN_RST 2
#define REC_LOST 3

// Per-CPU statistics slots (Go: stat* constants, same order).
#define STAT_MAP_FULL 0
#define STAT_RING_FULL 1
#define STAT_PARSE_FAIL 2
#define STAT_NON_IP 3
#define STAT_FRAGMENT 4
#define STAT_LOST_RECORDS 5 // REC_LOST records tried (Go compares what it drained)
#define STAT_MAX 6

struct vlan_hdr_min {
	__be16 tci;
	__be16 proto;
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

struct ext_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen; // in 8-octet units, not counting the first 8
};

struct frag_hdr_min {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; // offset << 3 | flags
	__be32 id;
};

struct ports_min {
	__be16 sport;
	__be16 dport;
};

struct tcp_flags_min {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 off;
	__u8 flags;
};

struct icmp_min {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be16 id;
	__be16 seq;
};

// flow_key is the map key: one 5-tuple as it appears on the wire at one
// hook. Addresses are 16 bytes, IPv4 v4-mapped (::ffff:a.b.c.d) as in
// flow.Tuple; ports in host order as flow.Tuple holds them.
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 hook;
	__u8 pad[2];
};

struct flow_val {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
	__u32 ifindex;   // where the key was first seen
	__u32 tcp_flags; // OR of the TCP flags seen
	__u64 notified_epoch;
};

struct ring_rec {
	struct flow_key key;
	__u32 kind;
};

// A plain hash, not LRU: an LRU map evicts live entries silently, and a
// silently dropped entry is a lost count. A full map fails the insert,
// which is counted and reported to the agent as a lost key.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
	__uint(max_entries, 262144); // Go sets it from Config.MapEntries
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // Go sets it from Config.RingBytes
} changes SEC(".maps");

// epoch is the agent's read round; a value notifies the ring once per epoch.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} epoch SEC(".maps");

// lost_notified: a key that did not fit -> the epoch its REC_LOST was sent
// in, so a flow that keeps missing the full map writes one record per read
// round, not one per packet (which would overflow the ring every round and
// turn every read into a walk of the whole map). LRU is safe here: an
// evicted entry only costs one more record.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, __u64);
	__uint(max_entries, 4096);
} lost_notified SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} stats SEC(".maps");

// senders: the pod-facing interfaces where flow_from_pod counts what the
// pod sends (ifindex -> 1), kept by the agent while they are attached in
// one network namespace. A packet leaving toward a pod that entered the
// node through one of them was counted there, as the sender's view the
// agent uses: the receiver-side copy is not counted again (half the map
// updates, lookups and deletions of traffic between two local pods).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 65536);
} senders SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1; // per-CPU: no other writer
}

static __always_inline int notify(struct flow_key *key, __u32 kind)
{
	struct ring_rec rec = {};
	__builtin_memcpy(&rec.key, key, sizeof(rec.key));
	rec.kind = kind;
	// The agent polls the ring each read round; waking it per record
	// would cost a wakeup per new flow for nothing.
	if (bpf_ringbuf_output(&changes, &rec, sizeof(rec), BPF_RB_NO_WAKEUP) != 0) {
		stat_inc(STAT_RING_FULL);
		return -1;
	}
	return 0;
}

// notify_lost names a key that did not fit in the map, once per epoch.
// STAT_LOST_RECORDS is counted before the record is written: Go compares
// the records it drained with this count as of the previous round, so a
// record in flight during a read is not taken for a dropped one.
static __always_inline void notify_lost(struct flow_key *key, __u64 cur)
{
	__u64 *last = bpf_map_lookup_elem(&lost_notified, key);
	if (last && *last == cur)
		return;
	bpf_map_update_elem(&lost_notified, key, &cur, BPF_ANY);
	stat_inc(STAT_LOST_RECORDS);
	if (notify(key, REC_LOST) != 0)
		// The ring is full: let the key's next packet try again (Go
		// has already counted this loss as unattributed).
		bpf_map_delete_elem(&lost_notified, key);
}

// icmp_ports maps an ICMP header to the ports of flow.Tuple the way
// pkg/conntrack decodes a conntrack ICMP tuple: the original direction
// (a request) has sport = identifier and dport = type<<8|code; its reply
// is that tuple reversed, so a reply carries the request's type in sport
// and the identifier in dport. Types conntrack does not track as
// connections (errors, router/neighbour discovery...) get sport 0 and
// dport type<<8|code.
static __always_inline void icmp_ports(struct icmp_min *ic, int v6, struct flow_key *key)
{
	__u8 type = ic->type;
	__u16 id = bpf_ntohs(ic->id);
	int req = -1; // the request type this reply answers
	int is_req = 0;
	if (!v6) {
		switch (type) {
		case 8: case 13: case 15: case 17:
			is_req = 1;
			break;
		case 0: req = 8; break;
		case 14: req = 13; break;
		case 16: req = 15; break;
		case 18: req = 17; break;
		}
	} else {
		switch (type) {
		case 128: case 139:
			is_req = 1;
			break;
		case 129: req = 128; break;
		case 140: req = 139; break;
		}
	}
	if (is_req) {
		key->sport = id;
		key->dport = (__u16)type << 8 | ic->code;
	} else if (req >= 0) {
		key->sport = (__u16)req << 8 | ic->code;
		key->dport = id;
	} else {
		key->sport = 0;
		key->dport = (__u16)type << 8 | ic->code;
	}
}

// parse_l4 fills the ports and TCP flags; l4 is the offset of the L4 header.
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 l4, struct flow_key *key, __u32 *tcp_flags)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (l4 > 0xffff)
		return -1;
	switch (key->proto) {
	case IPPROTO_TCP: {
		struct tcp_flags_min *th = data + l4;
		if ((void *)(th + 1) > end)
			return -1;
		key->sport = bpf_ntohs(th->sport);
		key->dport = bpf_ntohs(th->dport);
		*tcp_flags = th->flags;
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		struct ports_min *p = data + l4;
		if ((void *)(p + 1) > end)
			return -1;
		key->sport = bpf_ntohs(p->sport);
		key->dport = bpf_ntohs(p->dport);
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_min *ic = data + l4;
		if ((void *)(ic + 1) > end)
			return -1;
		icmp_ports(ic, key->proto == IPPROTO_ICMPV6, key);
		return 0;
	}
	}
	return 0; // other protocols: ports 0
}

// parse_ipv6 fills the key from an IPv6 header at l3 and the extension
// headers after it; *mark gets VAL_INCOMPLETE where conntrack accounts the
// datagram differently. It returns the IP length the header claims (0 with
// a zero payload length: a jumbogram or BIG TCP), or -1 without a header.
static __always_inline long parse_ipv6(struct __sk_buff *skb, __u32 l3, struct flow_key *key,
				       __u32 *tcp_flags, __u32 *mark)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ipv6hdr_min *ip6 = data + l3;
	if ((void *)(ip6 + 1) > end)
		return -1;
	__builtin_memcpy(key->saddr, ip6->saddr, 16);
	__builtin_memcpy(key->daddr, ip6->daddr, 16);
	__u32 payload = bpf_ntohs(ip6->payload_len);
	long iplen = payload ? payload + sizeof(*ip6) : 0;
	__u8 nh = ip6->nexthdr;
	__u32 off = l3 + sizeof(*ip6);
	int i;
	for (i = 0; i < MAX_EXT_HDRS; i++) {
		if (nh == IPPROTO_FRAGMENT) {
			struct frag_hdr_min *fh = data + off;
			if (off > 0xffff || (void *)(fh + 1) > end)
				goto fail;
			if (fh->frag_off & bpf_htons(0xfff8)) {
				// A later fragment: no L4 header, ports 0.
				key->proto = fh->nexthdr;
				stat_inc(STAT_FRAGMENT);
				return iplen;
			}
			// The first of several (M set): conntrack counts the
			// reassembled datagram, these bytes only this fragment.
			// Offset 0 without M is an atomic fragment: whole.
			if (fh->frag_off & bpf_htons(0x0001))
				*mark |= VAL_INCOMPLETE;
			nh = fh->nexthdr;
			off += sizeof(*fh);
			continue;
		}
		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS && nh != IPPROTO_AH)
			break;
		struct ext_hdr_min *eh = data + off;
		if (off > 0xffff || (void *)(eh + 1) > end)
			goto fail;
		// The connection is named through these headers, but its
		// counts are left to conntrack: they are rare between pods and
		// this accounting of them is not checked against conntrack's
		// (a routing header's address list, headers added or removed
		// on the way), and conntrack's totals are right by definition.
		if (nh != IPPROTO_HOPOPTS)
			*mark |= VAL_INCOMPLETE;
		off += nh == IPPROTO_AH ? ((__u32)eh->hdrlen + 2) * 4 : ((__u32)eh->hdrlen + 1) * 8;
		nh = eh->nexthdr;
	}
	key->proto = nh;
	if (i == MAX_EXT_HDRS && (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
				  nh == IPPROTO_AH || nh == IPPROTO_FRAGMENT)) {
		stat_inc(STAT_PARSE_FAIL);
		return iplen;
	}
	if (parse_l4(skb, off, key, tcp_flags) != 0)
		stat_inc(STAT_PARSE_FAIL);
	return iplen;
fail:
	// Truncated extension header: counted under it with ports 0. The
	// connection cannot be named, so it is counted as a parse failure.
	key->proto = nh;
	stat_inc(STAT_PARSE_FAIL);
	return iplen;
}

static __always_inline int count(struct __sk_buff *skb, __u8 hook)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct flow_key key = {};
	__u32 tcp_flags = 0;
	__u32 mark = 0; // VAL_INCOMPLETE or 0
	__u32 l3 = ETH_HLEN;
	__u32 iplen = 0; // length the IP header claims, 0 when unknown (BIG TCP)

	if (hook == HOOK_TO_POD) {
		__u32 in = skb->ingress_ifindex;
		if (in && bpf_map_lookup_elem(&senders, &in))
			return TC_ACT_UNSPEC;
	}
	if (data + ETH_HLEN > end)
		return TC_ACT_UNSPEC;
	__be16 proto = *(__be16 *)(data + 12);
	// Up to two in-band VLAN tags (a hardware-accelerated tag is not in the data).
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr_min *vh = data + l3;
		if ((void *)(vh + 1) > end) {
			stat_inc(STAT_PARSE_FAIL);
			return TC_ACT_UNSPEC;
		}
		proto = vh->proto;
		l3 += sizeof(*vh);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr_min *ip = data + l3;
		if ((void *)(ip + 1) > end) {
			stat_inc(STAT_PARSE_FAIL);
			return TC_ACT_UNSPEC;
		}
		__u32 ihl = (ip->ihl_version & 0x0f) * 4;
		if (ihl < sizeof(*ip)) {
			stat_inc(STAT_PARSE_FAIL);
			return TC_ACT_UNSPEC;
		}
		key.saddr[10] = 0xff;
		key.saddr[11] = 0xff;
		key.daddr[10] = 0xff;
		key.daddr[11] = 0xff;
		__builtin_memcpy(&key.saddr[12], ip->saddr, 4);
		__builtin_memcpy(&key.daddr[12], ip->daddr, 4);
		key.proto = ip->protocol;
		iplen = bpf_ntohs(ip->tot_len);
		__u16 frag = bpf_ntohs(ip->frag_off);
		if (frag & 0x1fff) {
			// A later fragment carries no L4 header: ports 0.
			stat_inc(STAT_FRAGMENT);
		} else {
			// The first of several (MF set): conntrack counts the
			// reassembled datagram, these bytes only this fragment.
			if (frag & 0x2000)
				mark = VAL_INCOMPLETE;
			if (parse_l4(skb, l3 + ihl, &key, &tcp_flags) != 0)
				stat_inc(STAT_PARSE_FAIL);
		}
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		long n = parse_ipv6(skb, l3, &key, &tcp_flags, &mark);
		if (n < 0) {
			stat_inc(STAT_PARSE_FAIL);
			return TC_ACT_UNSPEC;
		}
		iplen = n;
	} else {
		stat_inc(STAT_NON_IP);
		return TC_ACT_UNSPEC;
	}
	key.hook = hook;

	// Bytes are the IP datagram's length, as conntrack counts them: the
	// skb without its L2 header, trimmed to what the IP header claims
	// when the frame carries padding (ip_rcv trims before conntrack).
	__u64 bytes = skb->len > l3 ? skb->len - l3 : 0;
	if (iplen && iplen < bytes)
		bytes = iplen;

	__u32 zero = 0;
	__u64 *ep = bpf_map_lookup_elem(&epoch, &zero);
	__u64 cur = ep ? *ep : 0;
	__u64 now = bpf_ktime_get_ns();

	struct flow_val *v = bpf_map_lookup_elem(&flows, &key);
	if (!v) {
		struct flow_val init = {
			.packets = 1,
			.bytes = bytes,
			.first_ns = now,
			.last_ns = now,
			.ifindex = skb->ifindex,
			.tcp_flags = tcp_flags | mark,
			.notified_epoch = cur,
		};
		long err = bpf_map_update_elem(&flows, &key, &init, BPF_NOEXIST);
		if (err == 0) {
			notify(&key, (tcp_flags & (TCP_FIN | TCP_RST)) ? REC_FIN_RST : REC_CHANGED);
			return TC_ACT_UNSPEC;
		}
		// Another CPU inserted it first: count into its entry.
		v = bpf_map_lookup_elem(&flows, &key);
		if (!v) {
			stat_inc(STAT_MAP_FULL);
			notify_lost(&key, cur);
			return TC_ACT_UNSPEC;
		}
	}
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, bytes);
	v->last_ns = now;
	// The epoch again, after the additions: a read round that bumped it
	// since the first read may have looked this entry up before they
	// landed, and a notification in the new epoch makes it look again.
	if (ep)
		cur = *(volatile __u64 *)ep;
	if (tcp_flags | mark) {
		__u32 old = __sync_fetch_and_or(&v->tcp_flags, tcp_flags | mark);
		if ((tcp_flags & (TCP_FIN | TCP_RST)) && !(old & (TCP_FIN | TCP_RST))) {
			v->notified_epoch = cur;
			notify(&key, REC_FIN_RST);
			return TC_ACT_UNSPEC;
		}
	}
	if (v->notified_epoch != cur) {
		v->notified_epoch = cur;
		notify(&key, REC_CHANGED);
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int flow_from_pod(struct __sk_buff *skb)
{
	return count(skb, HOOK_FROM_POD);
}

SEC("tc")
int flow_to_pod(struct __sk_buff *skb)
{
	return count(skb, HOOK_TO_POD);
}

// The agent's lookups and deletions of many keys, one program run each
// instead of one system call per key (or per batch that a missing key
// ends: the kernel's batch delete stops at the first key it does not
// find, and a connection between two pods of this node has two views out
// of four that were never counted). The keys go in bulk_slots, which the
// agent maps into its memory: filling it costs no system call either.
// Programs of type syscall (Linux 5.14); where they cannot load, the agent
// makes the system calls.

// BULK_SLOTS bounds one run (Go: bulkSlots).
#define BULK_SLOTS 1024
#define ENOENT 2

struct bulk_slot {
	struct flow_key key;
	struct flow_val val; // flow_lookup_bulk: the key's value when found
	__s32 err;           // 0, or the negative errno (-ENOENT: no such key)
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct bulk_slot);
	__uint(max_entries, BULK_SLOTS);
} bulk_slots SEC(".maps");

// bulk_args is the run's context: n slots in, how many were handled out.
struct bulk_args {
	__u32 n;
	__u32 done;
};

SEC("syscall")
int flow_lookup_bulk(struct bulk_args *args)
{
	__u32 n = args->n, i;
	for (i = 0; i < BULK_SLOTS && i < n; i++) {
		__u32 idx = i;
		struct bulk_slot *s = bpf_map_lookup_elem(&bulk_slots, &idx);
		if (!s)
			break;
		struct flow_val *v = bpf_map_lookup_elem(&flows, &s->key);
		if (v) {
			s->val = *v;
			s->err = 0;
		} else {
			s->err = -ENOENT;
		}
	}
	args->done = i;
	return 0;
}

SEC("syscall")
int flow_delete_bulk(struct bulk_args *args)
{
	__u32 n = args->n, i;
	for (i = 0; i < BULK_SLOTS && i < n; i++) {
		__u32 idx = i;
		struct bulk_slot *s = bpf_map_lookup_elem(&bulk_slots, &idx);
		if (!s)
			break;
		// A lookup first: it takes no lock, and half the keys of a
		// connection between two local pods were never counted.
		if (bpf_map_lookup_elem(&flows, &s->key))
			s->err = bpf_map_delete_elem(&flows, &s->key);
		else
			s->err = -ENOENT;
	}
	args->done = i;
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
