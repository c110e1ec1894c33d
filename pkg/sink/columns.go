package sink

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/shard"
)

// Type is the type of an output column. Its name is the ClickHouse type
// every supported release accepts (18.16 onwards: no Map, DateTime64,
// IPv4/IPv6); the JSON lines sink writes the same type: a String as a JSON
// string, the integers and DateTime (Unix seconds, UTC) as JSON numbers,
// which is what ClickHouse's JSONEachRow reads back, so a JSON lines file
// (or the spool) can be inserted into the table as it is.
type Type uint8

// Column types.
const (
	TypeString Type = iota
	TypeUInt8
	TypeUInt16
	TypeUInt64
	TypeDateTime
	TypeUInt32
)

func (t Type) String() string {
	switch t {
	case TypeString:
		return "String"
	case TypeUInt8:
		return "UInt8"
	case TypeUInt16:
		return "UInt16"
	case TypeUInt64:
		return "UInt64"
	case TypeDateTime:
		return "DateTime"
	case TypeUInt32:
		return "UInt32"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Numeric reports whether values of t are integers (DateTime: Unix seconds).
func (t Type) Numeric() bool { return t != TypeString }

// Max is the largest value a numeric column of type t holds.
func (t Type) Max() uint64 {
	switch t {
	case TypeUInt8:
		return 1<<8 - 1
	case TypeUInt16:
		return 1<<16 - 1
	case TypeDateTime, TypeUInt32:
		return 1<<32 - 1
	}
	return 1<<64 - 1
}

// Meta is what every row of one batch shares: the aggregator that wrote it
// and the batch id (a ClickHouse retry looks its batch up by both).
type Meta struct {
	Aggregator string
	BatchID    uint64
}

// Column is one output column: the one definition the ClickHouse DDL and
// insert, the JSON lines fields, the spool and readers of either derive
// from. Exactly one of str and num is set, as Type says.
type Column struct {
	Name string
	Type Type
	// LowCardinality marks a String that releases which support it
	// store as LowCardinality(String).
	LowCardinality bool
	str            func(*correlate.Record, *Meta) string
	num            func(*correlate.Record, *Meta) uint64
}

// Str is the value of a String column for r.
func (c *Column) Str(r *correlate.Record, m *Meta) string {
	if c.str == nil {
		return ""
	}
	return c.str(r, m)
}

// Num is the value of a numeric column for r (DateTime: Unix seconds).
func (c *Column) Num(r *correlate.Record, m *Meta) uint64 {
	if c.num == nil {
		return 0
	}
	return c.num(r, m)
}

type rec = correlate.Record

func strCol(name string, f func(*rec) string) Column {
	return Column{Name: name, Type: TypeString, str: func(r *rec, _ *Meta) string { return f(r) }}
}

func lowStrCol(name string, f func(*rec) string) Column {
	c := strCol(name, f)
	c.LowCardinality = true
	return c
}

// numCol is the one place a typed accessor becomes a column: the Go type
// of f matches t, so no value is narrowed when a writer converts it.
func numCol[T uint8 | uint16 | uint32 | uint64](name string, t Type, f func(*rec) T) Column {
	return Column{Name: name, Type: t, num: func(r *rec, _ *Meta) uint64 { return uint64(f(r)) }}
}

func u8Col(name string, f func(*rec) uint8) Column   { return numCol(name, TypeUInt8, f) }
func u16Col(name string, f func(*rec) uint16) Column { return numCol(name, TypeUInt16, f) }
func u32Col(name string, f func(*rec) uint32) Column { return numCol(name, TypeUInt32, f) }
func u64Col(name string, f func(*rec) uint64) Column { return numCol(name, TypeUInt64, f) }

// timeCol stores Unix nanoseconds as whole seconds (18.16 has no
// DateTime64); unknown (zero or negative) times are the epoch.
func timeCol(name string, f func(*rec) int64) Column {
	return Column{Name: name, Type: TypeDateTime, num: func(r *rec, _ *Meta) uint64 {
		n := f(r)
		if n <= 0 {
			return 0
		}
		return min(uint64(n/1e9), TypeDateTime.Max())
	}}
}

func endNanos(r *rec) int64 {
	if r.StopNanos != 0 {
		return r.StopNanos
	}
	return r.ExportNanos
}

func addrString(a [16]byte) string { return netip.AddrFrom16(a).Unmap().String() }

// sideCols are Antrea's per-node elements for one side ("Source" or
// "Destination").
func sideCols(suffix string, side func(*rec) *correlate.Side) []Column {
	return []Column{
		u64Col("packetTotalCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).Fwd.Packets }),
		u64Col("octetTotalCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).Fwd.Bytes }),
		u64Col("packetDeltaCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).FwdDelta.Packets }),
		u64Col("octetDeltaCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).FwdDelta.Bytes }),
		u64Col("reversePacketTotalCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).Rev.Packets }),
		u64Col("reverseOctetTotalCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).Rev.Bytes }),
		u64Col("reversePacketDeltaCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).RevDelta.Packets }),
		u64Col("reverseOctetDeltaCountFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).RevDelta.Bytes }),
		u64Col("throughputFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).Throughput }),
		u64Col("reverseThroughputFrom"+suffix+"Node", func(r *rec) uint64 { return side(r).ReverseThroughput }),
		timeCol("flowEndSecondsFrom"+suffix+"Node", func(r *rec) int64 { return side(r).EndNanos }),
		strCol(strings.ToLower(suffix[:1])+suffix[1:]+"Exporter", func(r *rec) string { return side(r).Exporter }),
	}
}

// columns is the output in order; names follow Antrea's IEs where one
// exists so queries written for Antrea's flow-visibility schema carry
// over. It is never modified after package initialisation. Columns are
// only ever appended: an existing table gets new ones by ADD COLUMN, and
// a renamed or retyped column would break it.
var columns = func() []Column {
	cs := []Column{
		timeCol("flowStartSeconds", func(r *rec) int64 { return r.StartNanos }),
		timeCol("flowEndSeconds", endNanos),
		u8Col("flowEndReason", func(r *rec) uint8 { return uint8(r.EndReason) }),
		strCol("sourceIP", func(r *rec) string { return r.Tuple.Src().String() }),
		strCol("destinationIP", func(r *rec) string { return r.Tuple.Dst().String() }),
		u16Col("sourceTransportPort", func(r *rec) uint16 { return r.Tuple.SrcPort }),
		u16Col("destinationTransportPort", func(r *rec) uint16 { return r.Tuple.DstPort }),
		u8Col("protocolIdentifier", func(r *rec) uint8 { return r.Tuple.Proto }),
		u64Col("packetTotalCount", func(r *rec) uint64 { return r.Fwd.Packets }),
		u64Col("octetTotalCount", func(r *rec) uint64 { return r.Fwd.Bytes }),
		u64Col("packetDeltaCount", func(r *rec) uint64 { return r.FwdDelta.Packets }),
		u64Col("octetDeltaCount", func(r *rec) uint64 { return r.FwdDelta.Bytes }),
		u64Col("reversePacketTotalCount", func(r *rec) uint64 { return r.Rev.Packets }),
		u64Col("reverseOctetTotalCount", func(r *rec) uint64 { return r.Rev.Bytes }),
		u64Col("reversePacketDeltaCount", func(r *rec) uint64 { return r.RevDelta.Packets }),
		u64Col("reverseOctetDeltaCount", func(r *rec) uint64 { return r.RevDelta.Bytes }),
		u64Col("throughput", func(r *rec) uint64 { return r.Throughput }),
		u64Col("reverseThroughput", func(r *rec) uint64 { return r.ReverseThroughput }),
	}
	cs = append(cs, sideCols("Source", func(r *rec) *correlate.Side { return &r.FromSource })...)
	cs = append(cs, sideCols("Destination", func(r *rec) *correlate.Side { return &r.FromDestination })...)
	cs = append(cs,
		strCol("sourcePodName", func(r *rec) string { return r.Source.PodName }),
		lowStrCol("sourcePodNamespace", func(r *rec) string { return r.Source.PodNamespace }),
		lowStrCol("sourceNodeName", func(r *rec) string { return r.Source.NodeName }),
		strCol("sourcePodLabels", func(r *rec) string { return r.Source.Labels }),
		strCol("destinationPodName", func(r *rec) string { return r.Destination.PodName }),
		lowStrCol("destinationPodNamespace", func(r *rec) string { return r.Destination.PodNamespace }),
		lowStrCol("destinationNodeName", func(r *rec) string { return r.Destination.NodeName }),
		strCol("destinationPodLabels", func(r *rec) string { return r.Destination.Labels }),
		strCol("destinationClusterIP", func(r *rec) string {
			if !r.ClusterIP {
				return ""
			}
			return addrString(r.OrigDstIP)
		}),
		strCol("destinationServiceIP", func(r *rec) string {
			if !r.IsDNATed() {
				return ""
			}
			return addrString(r.OrigDstIP)
		}),
		u16Col("destinationServicePort", func(r *rec) uint16 {
			if !r.IsDNATed() {
				return 0
			}
			return r.OrigDstPort
		}),
		lowStrCol("destinationServicePortName", func(r *rec) string { return r.ServicePortName }),
		u8Col("flowType", func(r *rec) uint8 { return uint8(r.FlowType) }),
		lowStrCol("tcpState", func(r *rec) string { return r.TCPState.String() }),
		lowStrCol("correlation", func(r *rec) string { return r.Correlation.String() }),
		lowStrCol("appProtocolName", func(r *rec) string { return r.L7.AppProtocolName }),
		// A string holding a JSON object, as in Antrea's IE and the table.
		strCol("httpVals", func(r *rec) string { return r.L7.HTTPVals }),
		strCol("dnsQueryName", func(r *rec) string { return r.L7.DNSQueryName }),
		lowStrCol("dnsQueryType", func(r *rec) string { return r.L7.DNSQueryType }),
		lowStrCol("dnsResponseCode", func(r *rec) string { return r.L7.DNSResponseCode }),
		strCol("dnsAnswers", func(r *rec) string { return r.L7.DNSAnswers }),
		strCol("tlsServerName", func(r *rec) string { return r.L7.TLSServerName }),
		lowStrCol("tlsVersion", func(r *rec) string { return r.L7.TLSVersion }),
		strCol("tlsJA3", func(r *rec) string { return r.L7.TLSJA3 }),
		strCol("tlsJA3S", func(r *rec) string { return r.L7.TLSJA3S }),
		strCol("tlsJA4", func(r *rec) string { return r.L7.TLSJA4 }),
		Column{Name: "aggregator", Type: TypeString, LowCardinality: true, str: func(_ *rec, m *Meta) string { return m.Aggregator }},
		Column{Name: "batchId", Type: TypeUInt64, num: func(_ *rec, m *Meta) uint64 { return m.BatchID }},
		// The connection's direction-independent hash, exactly as agents
		// compute it to pick an aggregator replica (for a proxy-SNATed
		// connection, of the far node's view): a ClickHouse cluster shards
		// on it, so every row of a connection lands on one shard.
		u64Col("connectionKey", func(r *rec) uint64 { return shard.RecordKey(&r.Record) }),
		// Theia's cluster identity (its dashboards filter on it when
		// several clusters share a database): the clusterId the agent
		// exported (its clusterID, else the kube-system namespace UID).
		strCol("clusterUUID", func(r *rec) string { return r.ClusterID }),
	)
	cs = append(cs, theiaCols()...)
	cs = append(cs,
		// Where the node's source NAT (kube-proxy's masquerade of
		// NodePort/LoadBalancer traffic from outside) sent the
		// connection: the source the backend's node saw. Theia has no
		// such column; the names follow Antrea's proxySnat IEs.
		strCol("proxySnatIP", func(r *rec) string {
			if !r.IsSNATed() {
				return ""
			}
			return addrString(r.ProxySnatIP)
		}),
		u16Col("proxySnatPort", func(r *rec) uint16 { return r.ProxySnatPort }),
		// The owning workload of each end (Deployment, StatefulSet, ...;
		// empty for a bare pod, a node or an external address): what a
		// service map groups pods by.
		lowStrCol("sourceWorkloadKind", func(r *rec) string { return r.Source.WorkloadKind }),
		strCol("sourceWorkloadName", func(r *rec) string { return r.Source.WorkloadName }),
		lowStrCol("destinationWorkloadKind", func(r *rec) string { return r.Destination.WorkloadKind }),
		strCol("destinationWorkloadName", func(r *rec) string { return r.Destination.WorkloadName }),
		// The row's L7 counts (correlate.L7Counts), so that queries sum
		// requests and errors instead of parsing httpVals.
		u64Col("httpRequests", func(r *rec) uint64 { return r.L7Counts.HTTPRequests }),
		u64Col("http4xx", func(r *rec) uint64 { return r.L7Counts.HTTP4xx }),
		u64Col("http5xx", func(r *rec) uint64 { return r.L7Counts.HTTP5xx }),
		u64Col("dnsErrors", func(r *rec) uint64 { return r.L7Counts.DNSErrors }),
	)
	cs = append(cs, healthCols()...)
	return cs
}()

// healthCols are the connection's network health over the row's period
// and its destination's DNS name (flow.Record.Health, DestinationName;
// docs/ipfix-elements.md), named as their IPFIX elements. Zero and empty
// where the agents measured nothing (not TCP, no sample in the period, an
// agent without the eBPF programs or with export.healthElements off): a
// zero RTT is "no sample", never a measurement, so queries average
// tcpRttAvgMicroseconds over rows with tcpRttSampleCount > 0, weighted by
// it. How the two nodes' halves combine: correlate.Record.
func healthCols() []Column {
	h := func(r *rec) *flow.Health { return &r.Health }
	return []Column{
		u32Col("tcpRttMinMicroseconds", func(r *rec) uint32 { return h(r).RTTMinMicros }),
		u32Col("tcpRttAvgMicroseconds", func(r *rec) uint32 { return h(r).RTTAvgMicros }),
		u32Col("tcpRttMaxMicroseconds", func(r *rec) uint32 { return h(r).RTTMaxMicros }),
		u32Col("tcpRttSampleCount", func(r *rec) uint32 { return h(r).RTTSamples }),
		u32Col("tcpRetransmitDeltaCount", func(r *rec) uint32 { return h(r).FwdRetransmits }),
		u32Col("reverseTcpRetransmitDeltaCount", func(r *rec) uint32 { return h(r).RevRetransmits }),
		u32Col("tcpResetDeltaCount", func(r *rec) uint32 { return h(r).FwdResets }),
		u32Col("reverseTcpResetDeltaCount", func(r *rec) uint32 { return h(r).RevResets }),
		u32Col("tcpEstablishMicroseconds", func(r *rec) uint32 { return h(r).EstablishMicros }),
		u32Col("tcpZeroWindowDeltaCount", func(r *rec) uint32 { return h(r).ZeroWindows }),
		u32Col("droppedPacketDeltaCount", func(r *rec) uint32 { return h(r).FwdDrops }),
		u32Col("reverseDroppedPacketDeltaCount", func(r *rec) uint32 { return h(r).RevDrops }),
		lowStrCol("packetDropReason", func(r *rec) string { return h(r).DropReason }),
		strCol("destinationDnsName", func(r *rec) string { return r.DestinationName }),
	}
}

// theiaCols are the columns of Antrea Theia's flows table that flowlens
// has no value for (NetworkPolicy verdicts, Egress, Theia's own flags):
// they exist, empty or zero, so Theia's dashboards and the queries people
// wrote for its table run against this one unchanged (docs/theia.md).
// A column that gets a value later keeps its name and type and moves out
// of this list in place; the order of the whole table stays append-only.
func theiaCols() []Column {
	var cs []Column
	for _, dir := range []string{"ingress", "egress"} {
		cs = append(cs,
			emptyCol(dir+"NetworkPolicyName", TypeString),
			emptyCol(dir+"NetworkPolicyNamespace", TypeString),
			emptyCol(dir+"NetworkPolicyRuleName", TypeString),
			// Antrea's ruleAction (1 allow, 2 drop, 3 reject) and
			// policyType (1 K8s, 2 ACNP, 3 ANP): 0 is "no policy".
			emptyCol(dir+"NetworkPolicyRuleAction", TypeUInt8),
			emptyCol(dir+"NetworkPolicyType", TypeUInt8),
		)
	}
	cs = append(cs,
		emptyCol("egressName", TypeString),
		emptyCol("egressIP", TypeString),
		// Theia's policy recommendation marks rows it has checked.
		emptyCol("trusted", TypeUInt8),
	)
	return cs
}

// emptyCol is a column every row leaves empty (String) or zero. It has
// an accessor like any other, so a column always has exactly one.
func emptyCol(name string, t Type) Column {
	if t == TypeString {
		return Column{Name: name, Type: t, str: func(*rec, *Meta) string { return "" }}
	}
	return Column{Name: name, Type: t, num: func(*rec, *Meta) uint64 { return 0 }}
}

// columnIndex finds a column by name; built once, read only.
var columnIndex = func() map[string]int {
	m := make(map[string]int, len(columns))
	for i, c := range columns {
		m[c.Name] = i
	}
	return m
}()

// Columns returns the output columns in order (a copy).
func Columns() []Column { return append([]Column(nil), columns...) }

// ColumnNames lists the output columns in order.
func ColumnNames() []string {
	names := make([]string, len(columns))
	for i, c := range columns {
		names[i] = c.Name
	}
	return names
}

// LookupColumn finds a column by name.
func LookupColumn(name string) (Column, bool) {
	i, ok := columnIndex[name]
	if !ok {
		return Column{}, false
	}
	return columns[i], true
}
