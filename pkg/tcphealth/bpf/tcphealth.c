// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// TCP health per socket for flowlens: BTF tracepoint programs on the
// kernel's tcp/sock tracepoints keep, per socket (local, remote) tuple,
// cumulative counters that user space turns into per-record deltas.
//
// Only the kernel fields read here are declared, each struct with
// preserve_access_index so the loader relocates their offsets against the
// running kernel's BTF (CO-RE); no vmlinux.h.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

// enum tcp_state values (include/net/tcp_states.h, stable UAPI-like).
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10
#define TCP_CLOSING 11
#define TCP_NEW_SYN_RECV 12

// sk_shutdown bit (include/net/sock.h).
#define RCV_SHUTDOWN 1

// sock_stats.flags
#define FLAG_REPLACED 1 // this entry replaced a closed one: a new connection reused the tuple
// FLAG_RST_UNSURE: tcp_receive_reset fired where the stack may have called
// tcp_reset() itself, to abort on data that came after the socket shut
// its read side down (it received no RST then; it sends one). That abort's
// own reset, sent right after under the same socket lock, clears the flag;
// user space counts a flag that is still set, once the socket's close
// (which tcp_reset() does before returning) has settled, as one reset
// received.
#define FLAG_RST_UNSURE 2

// enum sk_rst_reason (include/net/rstreason.h); its value is relocated
// against the running kernel's BTF.
enum sk_rst_reason {
	SK_RST_REASON_TCP_ABORT_ON_DATA = 8,
};

// Per-CPU statistics slots (Go: stat* constants, same order).
#define STAT_EV_PROBE 0
#define STAT_EV_RETRANS 1
#define STAT_EV_RST_SENT 2
#define STAT_EV_RST_RECV 3
#define STAT_EV_STATE 4
#define STAT_CREATED 5
#define STAT_REPLACED 6
#define STAT_SOCKS_FULL 7
#define STAT_MINMAX_FULL 8
#define STAT_SYN_FULL 9
#define STAT_NO_TUPLE 10
#define STAT_MAX 11

// Read whole (16 bytes): its members are a union reached through macros.
struct in6_addr {
	__u8 bytes[16];
};

// The kernel's fields sit in anonymous unions; CO-RE matches them by name
// through those, so the flat declarations below relocate correctly.
struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	__u8 sk_shutdown;
} __attribute__((preserve_access_index));

struct request_sock {
	struct sock_common __req_common;
} __attribute__((preserve_access_index));

struct inet_sock {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct inet_sock icsk_inet;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 snd_wnd;
	__u32 srtt_us;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned char *head;
	unsigned char *data;
	__u16 network_header;
	char cb[48];
} __attribute__((preserve_access_index));

struct tcp_skb_cb {
	__u16 tcp_gso_segs;
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

// sock_key is a socket's (local, remote) tuple in flow.Tuple's layout:
// 16-byte addresses (IPv4 v4-mapped), ports in host order, proto TCP.
struct sock_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// sock_stats are cumulative since born_ns (bpf_ktime_get_ns); user space
// never writes them, it keeps the values of its previous read and takes
// differences, so no event is counted twice or lost between two reads.
struct sock_stats {
	__u64 born_ns;
	__u64 closed_ns; // 0 while the socket is open
	__u64 rtt_sum_us;
	__u64 rtt_samples;
	__u32 retrans;      // segments retransmitted by this socket
	__u32 rst_sent;     // RSTs this socket (or the stack on its behalf) sent
	__u32 rst_recv;     // RSTs this socket accepted (but see FLAG_RST_UNSURE)
	__u32 zero_win;     // times the peer's window was found zero (transitions)
	__u32 establish_us; // SYN_SENT -> ESTABLISHED, client sockets only
	__u8 in_zero_win;
	__u8 flags;
	__u8 pad[2];
};

// rtt_minmax holds the extremes of the samples since user space last took
// (looked up and deleted) the entry: a new period starts with no entry.
struct rtt_minmax {
	__u32 min_us;
	__u32 max_us;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_key);
	__type(value, struct sock_stats);
	__uint(max_entries, 65536); // Go sets it from Config.MapEntries
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_key);
	__type(value, struct rtt_minmax);
	__uint(max_entries, 65536); // Go sets it from Config.MapEntries
} minmax SEC(".maps");

// syn_start: a connecting socket's address -> when it entered SYN_SENT.
// Keyed by the socket because the kernel enters SYN_SENT before it picks
// the local port, so the tuple is not known yet.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16384); // Go sets it from Config.MapEntries/4
} syn_start SEC(".maps");

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

static __always_inline void v4_mapped(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(&dst[12], &a, 4);
}

// key_from_common fills k from a socket's common part (full, request or
// timewait socket alike). It returns -1 for a family other than IP. The
// pointer is a BTF one (tp_btf arguments), so its fields are read with
// plain loads, not probe-read helper calls.
static __always_inline int key_from_common(const struct sock_common *c, struct sock_key *k)
{
	unsigned short family = c->skc_family;
	if (family == AF_INET) {
		v4_mapped(k->saddr, c->skc_rcv_saddr);
		v4_mapped(k->daddr, c->skc_daddr);
	} else if (family == AF_INET6) {
		__builtin_memcpy(k->saddr, &c->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(k->daddr, &c->skc_v6_daddr, 16);
	} else {
		return -1;
	}
	k->sport = c->skc_num;
	k->dport = bpf_ntohs(c->skc_dport);
	k->proto = IPPROTO_TCP;
	return 0;
}

// key_from_sk fills k from a socket the stack passed and returns it as a
// tcp_sock in *tpp when it is a full TCP socket (NULL for a timewait or
// request socket). A full socket's local port is read from inet_sport: entering
// CLOSE releases the port (inet_num, i.e. skc_num, becomes 0) before the
// state change is traced and before an abort's reset is sent, while
// inet_sport keeps it, as the kernel's own inet_sock_set_state tracepoint
// reads it.
static __always_inline int key_from_sk(const struct sock *sk, struct sock_key *k, struct tcp_sock **tpp)
{
	if (key_from_common(&sk->__sk_common, k) != 0)
		return -1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	if (tp) {
		__u16 sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
		if (sport)
			k->sport = sport;
	}
	if (tpp)
		*tpp = tp;
	return 0;
}

// key_from_skb names the socket a received segment is addressed to: the
// segment's destination is the local end. skb->data is at the TCP header
// where the stack answers a segment with a reset (as the tracepoint itself
// assumes); the IP header is at head + network_header.
static __always_inline int key_from_skb(const struct sk_buff *skb, struct sock_key *k)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned char *data = BPF_CORE_READ(skb, data);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u8 first;
	if (!head || !data || nh == 0xffff)
		return -1;
	if (bpf_probe_read_kernel(&first, 1, head + nh) != 0)
		return -1;
	if ((first >> 4) == 4) {
		struct iphdr_min ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) != 0 || ip.protocol != IPPROTO_TCP)
			return -1;
		__be32 s, d;
		__builtin_memcpy(&s, ip.saddr, 4);
		__builtin_memcpy(&d, ip.daddr, 4);
		v4_mapped(k->saddr, d);
		v4_mapped(k->daddr, s);
	} else if ((first >> 4) == 6) {
		struct ipv6hdr_min ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) != 0)
			return -1;
		__builtin_memcpy(k->saddr, ip6.daddr, 16);
		__builtin_memcpy(k->daddr, ip6.saddr, 16);
	} else {
		return -1;
	}
	__be16 ports[2];
	if (bpf_probe_read_kernel(ports, sizeof(ports), data) != 0)
		return -1;
	k->sport = bpf_ntohs(ports[1]);
	k->dport = bpf_ntohs(ports[0]);
	k->proto = IPPROTO_TCP;
	return 0;
}

// alive: the event comes from the socket of an open connection (not a
// closed, timewait, request or listening socket), so a closed entry under
// its tuple belongs to an earlier connection.
static __always_inline int alive(const struct sock *sk)
{
	if (!sk)
		return 0;
	unsigned char st = sk->__sk_common.skc_state;
	return st != TCP_CLOSE && st != TCP_TIME_WAIT && st != TCP_NEW_SYN_RECV && st != TCP_LISTEN;
}

// upsert returns the entry of k, creating it. A closed entry that an open
// socket's event finds is replaced by a fresh one marked FLAG_REPLACED: a
// new connection reused the tuple before user space took the old entry.
static __always_inline struct sock_stats *upsert(struct sock_key *k, int is_alive)
{
	struct sock_stats *s = bpf_map_lookup_elem(&socks, k);
	if (s && !(is_alive && s->closed_ns))
		return s;
	struct sock_stats init = {};
	init.born_ns = bpf_ktime_get_ns();
	__u64 flags = BPF_NOEXIST;
	if (s) {
		init.flags = FLAG_REPLACED;
		flags = BPF_ANY;
	}
	// A failed insert is another CPU's creation (EEXIST) or a map that
	// could not make room: the lookup below tells which.
	if (bpf_map_update_elem(&socks, k, &init, flags) == 0) {
		stat_inc(s ? STAT_REPLACED : STAT_CREATED);
		// The closed connection's RTT extremes, which its records no
		// longer take (the entry is the new connection's now), must
		// not open the new connection's first period.
		if (s)
			bpf_map_delete_elem(&minmax, k);
	}
	s = bpf_map_lookup_elem(&socks, k);
	if (!s)
		stat_inc(STAT_SOCKS_FULL);
	return s;
}

static __always_inline void add_rtt_sample(struct sock_key *k, struct sock_stats *s, __u32 rtt)
{
	// The extremes first, then the sum and count. User space reads the
	// counters first and takes the extremes after, so a sample landing
	// between its two reads is in this period's extremes and the next
	// period's count; if the next period has no other sample, its count
	// comes without extremes and user space reports the average (that
	// very sample) as both.
	struct rtt_minmax *mm = bpf_map_lookup_elem(&minmax, k);
	if (mm) {
		// One socket's tcp_probe runs under its socket lock, so no
		// other CPU updates these two at the same time.
		if (rtt < mm->min_us)
			mm->min_us = rtt;
		if (rtt > mm->max_us)
			mm->max_us = rtt;
	} else {
		struct rtt_minmax init = {.min_us = rtt, .max_us = rtt};
		if (bpf_map_update_elem(&minmax, k, &init, BPF_NOEXIST) != 0)
			stat_inc(STAT_MINMAX_FULL);
	}
	// Plain additions: only tcp_probe writes these, and it runs under
	// the socket's lock (aligned 64-bit stores are not torn for readers).
	s->rtt_sum_us += rtt;
	s->rtt_samples += 1;
}

// tcp_probe runs for every segment an established socket receives, before
// the segment is processed: srtt_us and snd_wnd are as of the previous one.
SEC("tp_btf/tcp_probe")
int BPF_PROG(th_tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	stat_inc(STAT_EV_PROBE);
	struct sock_key k = {};
	struct tcp_sock *tp = NULL;
	if (key_from_sk(sk, &k, &tp) != 0 || !tp)
		return 0;
	struct sock_stats *s = upsert(&k, 1);
	if (!s)
		return 0;
	__u32 srtt = tp->srtt_us;
	__u32 wnd = tp->snd_wnd;
	if (srtt)
		add_rtt_sample(&k, s, srtt >> 3);
	if (wnd == 0) {
		if (!s->in_zero_win) {
			s->in_zero_win = 1;
			s->zero_win += 1; // tcp_probe only, under the socket lock
		}
	} else if (s->in_zero_win) {
		s->in_zero_win = 0;
	}
	return 0;
}

// tcp_retransmit_skb: since 6.15 it fires for failed attempts too, with
// their error; only a segment that went out counts. tcp_gso_segs is
// tcp_skb_pcount(): one skb may carry several segments.
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(th_tcp_retransmit_skb, const struct sock *sk, const struct sk_buff *skb, int err)
{
	stat_inc(STAT_EV_RETRANS);
	if (err != 0)
		return 0;
	struct sock_key k = {};
	if (key_from_sk(sk, &k, NULL) != 0)
		return 0;
	struct sock_stats *s = upsert(&k, alive(sk));
	if (!s)
		return 0;
	__u16 segs = 0;
	const struct tcp_skb_cb *cb = (const void *)skb->cb;
	BPF_CORE_READ_INTO(&segs, cb, tcp_gso_segs);
	__sync_fetch_and_add(&s->retrans, segs ? segs : 1);
	return 0;
}

// tcp_retransmit_synack: a server's SYN-ACK sent again from its request
// socket, which has the connection's tuple before the socket exists.
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(th_tcp_retransmit_synack, const struct sock *sk, const struct request_sock *req)
{
	stat_inc(STAT_EV_RETRANS);
	struct sock_key k = {};
	if (key_from_common(&req->__req_common, &k) != 0)
		return 0;
	// The request socket is not the connection's socket yet; a closed
	// entry under this tuple is replaced when the new socket's first
	// event finds it, so treat this one as alive: it is a new connection.
	struct sock_stats *s = upsert(&k, 1);
	if (s)
		__sync_fetch_and_add(&s->retrans, 1);
	return 0;
}

// tcp_send_reset: sk is NULL when the stack answers a segment no socket
// owns (a closed port), and skb is NULL for an active reset (abort,
// SO_LINGER 0). The segment answered names the tuple exactly, even where
// sk is a listener, so it is preferred.
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(th_tcp_send_reset, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	stat_inc(STAT_EV_RST_SENT);
	struct sock_key k = {};
	int err = -1;
	if (skb)
		err = key_from_skb(skb, &k);
	if (err != 0 && sk)
		err = key_from_sk(sk, &k, NULL);
	if (err != 0) {
		stat_inc(STAT_NO_TUPLE);
		return 0;
	}
	struct sock_stats *s = upsert(&k, alive(sk));
	if (!s)
		return 0;
	// The stack aborting on data answers the segment it aborted on (no
	// RST: never one in answer to an RST) for the socket it has just run
	// tcp_reset() on: that socket received no reset. Cleared before the
	// count below, so a reader that sees this reset sent sees it cleared.
	if (sk && skb && (s->flags & FLAG_RST_UNSURE) &&
	    bpf_core_enum_value_exists(enum sk_rst_reason, SK_RST_REASON_TCP_ABORT_ON_DATA) &&
	    reason == bpf_core_enum_value(enum sk_rst_reason, SK_RST_REASON_TCP_ABORT_ON_DATA))
		s->flags &= ~FLAG_RST_UNSURE; // under the socket lock, as the flag's setting
	__sync_fetch_and_add(&s->rst_sent, 1);
	// No socket owns the tuple (a closed port): the entry stands for no
	// open socket, so it is closed from the start and the sweep may take
	// it, and a socket that later opens on the tuple replaces it.
	if (!sk && !s->closed_ns)
		s->closed_ns = bpf_ktime_get_ns();
	return 0;
}

// may_abort_on_data: the socket is where tcp_rcv_state_process() calls
// tcp_reset() itself when a segment brings data: its read side is shut
// down and it is in one of the states that check for it.
static __always_inline int may_abort_on_data(const struct sock *sk)
{
	if (!(sk->sk_shutdown & RCV_SHUTDOWN))
		return 0;
	unsigned char st = sk->__sk_common.skc_state;
	return st == TCP_FIN_WAIT1 || st == TCP_FIN_WAIT2 || st == TCP_CLOSE_WAIT || st == TCP_CLOSING ||
	       st == TCP_LAST_ACK;
}

// tcp_receive_reset fires in tcp_reset(), which the stack calls for an RST
// it accepted but also, with the segment it is processing, to abort a
// connection that got data after shutting its read side down. The
// tracepoint passes the socket alone, not that segment, so where the
// socket's state allows the abort the reset is left unsure
// (FLAG_RST_UNSURE) for the abort's own reset to cancel; elsewhere it is
// an RST received.
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(th_tcp_receive_reset, struct sock *sk)
{
	stat_inc(STAT_EV_RST_RECV);
	struct sock_key k = {};
	if (key_from_sk(sk, &k, NULL) != 0)
		return 0;
	// The socket is still in its state of before the reset.
	struct sock_stats *s = upsert(&k, alive(sk));
	if (!s)
		return 0;
	if (may_abort_on_data(sk))
		s->flags |= FLAG_RST_UNSURE; // under the socket lock: tcp_reset()'s callers hold it
	else
		__sync_fetch_and_add(&s->rst_recv, 1);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(th_inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	stat_inc(STAT_EV_STATE);
	__u64 ptr = (__u64)sk;
	if (newstate == TCP_SYN_SENT) {
		__u64 now = bpf_ktime_get_ns();
		if (bpf_map_update_elem(&syn_start, &ptr, &now, BPF_ANY) != 0)
			stat_inc(STAT_SYN_FULL);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		__u64 *t0 = bpf_map_lookup_elem(&syn_start, &ptr);
		__u64 start = t0 ? *t0 : 0;
		if (t0)
			bpf_map_delete_elem(&syn_start, &ptr);
		if (newstate != TCP_ESTABLISHED || !start)
			goto closed;
		struct sock_key k = {};
		if (key_from_sk(sk, &k, NULL) != 0)
			return 0;
		// The socket's state is already ESTABLISHED here: alive.
		struct sock_stats *s = upsert(&k, 1);
		if (s) {
			__u64 us = (bpf_ktime_get_ns() - start) / 1000;
			s->establish_us = us > 0xffffffff ? 0xffffffff : (us ? us : 1);
		}
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		// A server's new connection: replace a closed entry of an
		// earlier one under the same tuple now, before its counts mix.
		struct sock_key k = {};
		if (key_from_sk(sk, &k, NULL) != 0)
			return 0;
		struct sock_stats *s = bpf_map_lookup_elem(&socks, &k);
		if (s && s->closed_ns)
			upsert(&k, 1);
		return 0;
	}
closed:
	if (newstate == TCP_CLOSE) {
		struct sock_key k = {};
		if (key_from_sk(sk, &k, NULL) != 0)
			return 0;
		struct sock_stats *s = bpf_map_lookup_elem(&socks, &k);
		if (s && !s->closed_ns)
			s->closed_ns = bpf_ktime_get_ns();
	}
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
