// Package flow holds the types that travel through the pipeline:
// source (conntrack, eBPF) -> connstore -> expirequeue -> ipfixexport.
//
// Addresses are kept as 16-byte arrays (IPv4 as v4-mapped IPv6) rather than
// netip.Addr so that Tuple and Conn contain no pointers: the store keeps up to
// maxConnections of them in maps and slices that the garbage collector then
// never has to scan.
package flow

import (
	"fmt"
	"net/netip"
)

// Tuple identifies a connection. For a connection tracked through DNAT, Src
// is the original source and Dst the real endpoint (the reply direction's
// source), so that both halves of a Service connection key the same way on
// every node.
type Tuple struct {
	SrcIP   [16]byte
	DstIP   [16]byte
	SrcPort uint16
	DstPort uint16
	Proto   uint8
}

// NewTuple builds a Tuple; IPv4 addresses are stored v4-mapped.
func NewTuple(src, dst netip.Addr, srcPort, dstPort uint16, proto uint8) Tuple {
	return Tuple{SrcIP: src.As16(), DstIP: dst.As16(), SrcPort: srcPort, DstPort: dstPort, Proto: proto}
}

// Src returns the source address, unmapped to IPv4 where it is one.
func (t Tuple) Src() netip.Addr { return netip.AddrFrom16(t.SrcIP).Unmap() }

// Dst returns the destination address, unmapped to IPv4 where it is one.
func (t Tuple) Dst() netip.Addr { return netip.AddrFrom16(t.DstIP).Unmap() }

// IsIPv4 reports whether the tuple's source is an IPv4 address.
func (t Tuple) IsIPv4() bool { return t.Src().Is4() }

// Reverse returns the tuple as seen from the other end.
func (t Tuple) Reverse() Tuple {
	return Tuple{SrcIP: t.DstIP, DstIP: t.SrcIP, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto}
}

func (t Tuple) String() string {
	return fmt.Sprintf("%s %s -> %s",
		ProtoName(t.Proto),
		netip.AddrPortFrom(t.Src(), t.SrcPort), netip.AddrPortFrom(t.Dst(), t.DstPort))
}

// IP protocol numbers used across the pipeline.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoSCTP   uint8 = 132
	ProtoICMPv6 uint8 = 58
)

// ProtoName names an IP protocol number the way flow tables print it.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// Counters are packet and octet counts of one direction.
type Counters struct {
	Packets uint64
	Bytes   uint64
}

// Sub returns c - base. ok is false when a counter went backwards, which means
// the kernel entry was replaced and the caller must treat it as a new
// connection rather than emit a wrapped delta.
func (c Counters) Sub(base Counters) (d Counters, ok bool) {
	if c.Packets < base.Packets || c.Bytes < base.Bytes {
		return Counters{}, false
	}
	return Counters{Packets: c.Packets - base.Packets, Bytes: c.Bytes - base.Bytes}, true
}

// TCPState is the conntrack TCP state; values follow the kernel's
// enum tcp_conntrack so a netlink attribute converts without a table.
type TCPState uint8

// Kernel TCP conntrack states (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
const (
	TCPStateNone TCPState = iota
	TCPStateSynSent
	TCPStateSynRecv
	TCPStateEstablished
	TCPStateFinWait
	TCPStateCloseWait
	TCPStateLastAck
	TCPStateTimeWait
	TCPStateClose
	TCPStateSynSent2
)

var tcpStateNames = [...]string{
	"", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2",
}

// String returns the name Antrea exports in the tcpState IE.
func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("TCP_STATE_%d", s)
}

// Conn is one connection as the sources report it. All fields are values so
// a Conn can be copied into the store without allocating.
type Conn struct {
	Tuple Tuple
	// OrigDstIP/OrigDstPort are the destination the client dialled: the
	// Service VIP when the connection was DNATed, else equal to Tuple.Dst.
	OrigDstIP   [16]byte
	OrigDstPort uint16
	Zone        uint16
	// ProxySnatIP/ProxySnatPort are the source the connection was
	// translated to on this node (the reply direction's destination), set
	// only when it differs from Tuple.Src: kube-proxy's masquerade of
	// NodePort/LoadBalancer traffic from outside, where the backend's node
	// sees this address instead of the client. Zero when not SNATed; ICMP
	// has no port. Without them the two nodes' records of such a
	// connection cannot be joined (Antrea's proxySnatIPv4/IPv6/Port).
	ProxySnatIP   [16]byte
	ProxySnatPort uint16
	Mark          uint32
	ID            uint32 // conntrack id; a new id on the same tuple is a new connection
	Status        uint32 // conntrack status bits
	TCPState      TCPState
	// Counters says which source Fwd and Rev come from. One source per
	// connection for its whole life: two sources never agree to the packet
	// at every instant, and totals that step back would look like a new
	// kernel entry.
	Counters CounterSource
	// StartNanos/StopNanos are Unix nanoseconds; zero when unknown
	// (nf_conntrack_timestamp off). StopNanos is set once the kernel closed it.
	StartNanos int64
	StopNanos  int64
	Fwd        Counters // original direction totals (client -> server)
	Rev        Counters // reply direction totals
}

// CounterSource names where a connection's counters are read.
type CounterSource uint8

const (
	// CountersConntrack: the kernel's conntrack accounting (dumps, GET,
	// DESTROY events).
	CountersConntrack CounterSource = iota
	// CountersBPF: the eBPF program on the pods' interfaces, which saw the
	// connection from its first packet.
	CountersBPF
	// CountersConntrackLater: counted by conntrack, none read yet (a NEW
	// event, which carries none, with eBPF counting the rest: the resync
	// or the connection's end brings them). Zero counters then mean
	// "unknown", not "nothing crossed".
	CountersConntrackLater
)

// OrigDst returns the destination the client dialled.
func (c *Conn) OrigDst() netip.Addr { return netip.AddrFrom16(c.OrigDstIP).Unmap() }

// ProxySnat returns the address the connection's source was translated
// to, and whether it was.
func (c *Conn) ProxySnat() (netip.AddrPort, bool) {
	if !c.IsSNATed() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(netip.AddrFrom16(c.ProxySnatIP).Unmap(), c.ProxySnatPort), true
}

// IsSNATed reports whether the connection's source was translated on this
// node. The zero array is never a translated address: an IPv4 one is
// stored v4-mapped, and :: is not a source NAT can pick.
func (c *Conn) IsSNATed() bool { return c.ProxySnatIP != [16]byte{} }

// CorrelationTuple is the tuple under which the nodes that report a
// connection meet (aggregator replica, correlation table, ClickHouse
// shard). It is Tuple unless this node source-NATed the connection: the
// node it was handed to (a NodePort or LoadBalancer backend's node) sees
// only the translated source, so the connection is keyed by that view,
// the one both nodes can name. ICMP keeps its identifier: NAT has no port
// to report for it.
func (c *Conn) CorrelationTuple() Tuple {
	if !c.IsSNATed() {
		return c.Tuple
	}
	t := c.Tuple
	t.SrcIP = c.ProxySnatIP
	if t.Proto != ProtoICMP && t.Proto != ProtoICMPv6 {
		t.SrcPort = c.ProxySnatPort
	}
	return t
}

// IsDNATed reports whether the connection's destination was translated,
// i.e. the client dialled a Service VIP rather than the endpoint.
func (c *Conn) IsDNATed() bool {
	return c.OrigDstIP != c.Tuple.DstIP || c.OrigDstPort != c.Tuple.DstPort
}

// EndReason is the IANA flowEndReason (IE 136).
type EndReason uint8

// IANA flowEndReason values.
const (
	EndIdleTimeout   EndReason = 1
	EndActiveTimeout EndReason = 2
	EndOfFlow        EndReason = 3
	EndForced        EndReason = 4
	EndLackResources EndReason = 5
)

func (r EndReason) String() string {
	switch r {
	case EndIdleTimeout:
		return "idle"
	case EndActiveTimeout:
		return "active"
	case EndOfFlow:
		return "end-of-flow"
	case EndForced:
		return "forced"
	case EndLackResources:
		return "lack-of-resources"
	}
	return fmt.Sprintf("reason-%d", r)
}

// FlowType is Antrea's flowType IE (56506/137).
type FlowType uint8

// Antrea flowType values.
const (
	FlowTypeUnknown      FlowType = 0
	FlowTypeIntraNode    FlowType = 1
	FlowTypeInterNode    FlowType = 2
	FlowTypeToExternal   FlowType = 3
	FlowTypeFromExternal FlowType = 4
)

func (t FlowType) String() string {
	switch t {
	case FlowTypeIntraNode:
		return "intra-node"
	case FlowTypeInterNode:
		return "inter-node"
	case FlowTypeToExternal:
		return "to-external"
	case FlowTypeFromExternal:
		return "from-external"
	}
	return "unknown"
}

// Endpoint is the Kubernetes identity of one end of a flow; empty fields are
// exported as empty strings, as Antrea does.
type Endpoint struct {
	PodName      string
	PodNamespace string
	NodeName     string
	// Labels is the pod's labels as one JSON object (Antrea's
	// sourcePodLabels/destinationPodLabels encoding), or empty.
	Labels string
	// WorkloadKind/WorkloadName are the pod's owning workload: its
	// controller, one step further up for a ReplicaSet (its Deployment)
	// or a Job (its CronJob). Empty for a bare pod, a node or an
	// external address; a bare pod is identified by PodName alone.
	WorkloadKind string
	WorkloadName string
}

// L7 carries application-layer details matched from Suricata EVE events.
type L7 struct {
	AppProtocolName string
	// HTTPVals is one JSON object keyed by transaction id (Antrea's encoding),
	// or empty.
	HTTPVals string

	// DNS: the last query seen on the connection since its previous
	// record (docs/ipfix-elements.md lists the IEs these are exported as).
	DNSQueryName    string
	DNSQueryType    string // "A", "AAAA", ... as Suricata names it
	DNSResponseCode string // "NOERROR", "NXDOMAIN", ...; empty until a response
	DNSAnswers      string // answer data, comma-separated, bounded
	// TLS: the connection's handshake.
	TLSServerName string
	TLSVersion    string // "TLS 1.2", "TLS 1.3", ... as Suricata names it
	TLSJA3        string // JA3 hash of the ClientHello
	TLSJA3S       string // JA3S hash of the ServerHello
	TLSJA4        string
}

// Record is what the exporter sends for one connection at one expiry:
// totals from Conn, deltas since the previous export of that connection, and
// the context enrichment filled in.
type Record struct {
	Conn
	FwdDelta  Counters
	RevDelta  Counters
	EndReason EndReason
	// ExportNanos is when the record was produced; flowEndSeconds for a
	// connection still open.
	ExportNanos int64

	FlowType        FlowType
	Source          Endpoint
	Destination     Endpoint
	ServicePortName string // "namespace/service:port-name"
	ClusterIP       bool   // OrigDst is a Service ClusterIP (fills destinationClusterIPv4/6)
	// ClusterID identifies the cluster the exporting agent runs in
	// (Antrea's clusterId IE): agentconfig's clusterID, else the UID of
	// the kube-system namespace; empty when neither is known.
	ClusterID string
	L7        L7
	// Health is what the kernel's TCP stack and drop points reported for
	// the connection since its previous record (pkg/tcphealth,
	// pkg/packetdrops); zero where they saw nothing or do not run.
	Health Health
	// DestinationName is the DNS name the source pod resolved to the
	// destination address (pkg/dnsnames): the answer of a response seen on
	// pod traffic, still within its TTL. Empty when none is known.
	DestinationName string
}

// Health is a connection's network health over one record period (since
// its previous record). Fwd is what the source sent (the original
// direction), Rev what the destination sent.
type Health struct {
	// RTT of the connection's sockets on this node: the kernel's smoothed
	// round-trip time, sampled as ACKs arrive, over the record period.
	// RTTSamples is how many samples the three figures come from; all
	// four are zero when there was none (not a TCP socket on this node,
	// or no ACK in the period).
	RTTMinMicros uint32
	RTTAvgMicros uint32
	RTTMaxMicros uint32
	RTTSamples   uint32
	// Retransmitted segments, by the source and by the destination.
	FwdRetransmits uint32
	RevRetransmits uint32
	// Resets sent by the source and by the destination; an RST seen both
	// leaving one socket and arriving at the other (both ends on this
	// node) is one reset.
	FwdResets uint32
	RevResets uint32
	// EstablishMicros is the time from the client's SYN to ESTABLISHED,
	// as the client's socket saw it: in the first record after the
	// handshake only, zero in every other.
	EstablishMicros uint32
	// ZeroWindows is how often a sender of the connection found the
	// peer's receive window zero.
	ZeroWindows uint32
	// Packets of the connection the kernel dropped, per direction, and
	// the kernel's reason for the most frequent of them in the period
	// (enum skb_drop_reason without its prefix, e.g. "NETFILTER_DROP");
	// empty when none was dropped.
	FwdDrops   uint32
	RevDrops   uint32
	DropReason string
}

// Forms are the tuples under which the connection's original-direction
// packets appear on this node, Tuple first: as the client sent them to
// the address it dialled (before DNAT), as the server receives them, and
// as they leave source-NATed. The reply direction's forms are their
// Reverse. A client's socket is named by the first form (local, remote),
// a server's by the Reverse of the second or third. n counts the distinct
// forms.
func (c *Conn) Forms() (forms [3]Tuple, n int) {
	forms[0] = c.Tuple
	n = 1
	if c.OrigDstIP != ([16]byte{}) && c.IsDNATed() {
		forms[n] = Tuple{SrcIP: c.Tuple.SrcIP, DstIP: c.OrigDstIP, SrcPort: c.Tuple.SrcPort, DstPort: c.OrigDstPort, Proto: c.Tuple.Proto}
		n++
	}
	if c.IsSNATed() {
		forms[n] = c.CorrelationTuple()
		n++
	}
	return forms, n
}

// DirectionOf says whether t, a packet's or a sending socket's (local,
// remote) tuple, is one of the connection's forms (the original
// direction: fwd true), the Reverse of one (the reply direction), or
// neither (ok false).
func (c *Conn) DirectionOf(t Tuple) (fwd, ok bool) {
	forms, n := c.Forms()
	for i := range n {
		switch t {
		case forms[i]:
			return true, true
		case forms[i].Reverse():
			return false, true
		}
	}
	return false, false
}

// L7Want says which ends of a connection opted into L7 export through the
// visibility.antrea.io/l7-export annotation: the source pod with egress/both,
// the destination pod with ingress/both.
type L7Want uint8

// L7Want bits.
const (
	L7None        L7Want = 0
	L7Source      L7Want = 1 << 0 // the source pod asked for its egress
	L7Destination L7Want = 1 << 1 // the destination pod asked for its ingress
)

// Any reports whether either end wants L7 for the connection.
func (w L7Want) Any() bool { return w != L7None }

// DefaultObservationDomainID is the IPFIX observation domain id an agent
// uses unless configured otherwise: FNV-1a of its node name (never 0). The
// aggregator relies on it to tell which node exported a half of an
// inter-node connection when both halves name both pods.
func DefaultObservationDomainID(nodeName string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(nodeName); i++ {
		h ^= uint32(nodeName[i])
		h *= 16777619
	}
	if h == 0 {
		h = 1
	}
	return h
}
