package clickhouse

import (
	"fmt"
	"strings"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Version is a ClickHouse server version.
type Version struct{ Major, Minor, Patch uint64 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v >= major.minor.
func (v Version) AtLeast(major, minor uint64) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// lowCardinalityFrom is the first release where LowCardinality needs no
// experimental setting; before it (Debian's 18.16) names stay String.
var lowCardinalityFrom = Version{Major: 19, Minor: 9}

// batchInfo is what every row of one insert shares.
type batchInfo struct {
	aggregator string
	batchID    uint64
}

// column is one column of the flows table. typ is accepted by every
// supported release (18.16 onwards: no Map, DateTime64, IPv4/IPv6); lowCard
// marks a String that newer releases store as LowCardinality(String).
type column struct {
	name    string
	typ     string
	lowCard bool
	build   func(rs []*correlate.Record, bi *batchInfo) any
}

func (c column) typeFor(v Version) string {
	if c.lowCard && v.AtLeast(lowCardinalityFrom.Major, lowCardinalityFrom.Minor) {
		return "LowCardinality(String)"
	}
	return c.typ
}

// typedCol is a column of ClickHouse type typ filled by f for each record;
// the slice type it builds is what clickhouse-go expects for typ.
func typedCol[T any](name, typ string, f func(*correlate.Record) T) column {
	return column{name: name, typ: typ, build: func(rs []*correlate.Record, _ *batchInfo) any {
		out := make([]T, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}}
}

func strCol(name string, f func(*correlate.Record) string) column {
	return typedCol(name, "String", f)
}

func lowStrCol(name string, f func(*correlate.Record) string) column {
	c := strCol(name, f)
	c.lowCard = true
	return c
}

func u8Col(name string, f func(*correlate.Record) uint8) column { return typedCol(name, "UInt8", f) }

func u16Col(name string, f func(*correlate.Record) uint16) column {
	return typedCol(name, "UInt16", f)
}

func u64Col(name string, f func(*correlate.Record) uint64) column {
	return typedCol(name, "UInt64", f)
}

// timeCol stores Unix nanoseconds as a DateTime (whole seconds; 18.16 has
// no DateTime64).
func timeCol(name string, f func(*correlate.Record) int64) column {
	return typedCol(name, "DateTime", func(r *correlate.Record) time.Time { return secondsTime(f(r)) })
}

func secondsTime(nanos int64) time.Time {
	if nanos <= 0 {
		return time.Unix(0, 0).UTC()
	}
	return time.Unix(nanos/1e9, 0).UTC()
}

func endNanos(r *correlate.Record) int64 {
	if r.StopNanos != 0 {
		return r.StopNanos
	}
	return r.ExportNanos
}

func addrString(a [16]byte) string {
	return flow.Tuple{SrcIP: a}.Src().String()
}

func serviceIP(r *correlate.Record) string {
	if !r.IsDNATed() {
		return ""
	}
	return addrString(r.OrigDstIP)
}

// sideCols are Antrea's per-node elements for one side ("Source" or
// "Destination").
func sideCols(suffix string, side func(*correlate.Record) *correlate.Side) []column {
	return []column{
		u64Col("packetTotalCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).Fwd.Packets }),
		u64Col("octetTotalCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).Fwd.Bytes }),
		u64Col("packetDeltaCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).FwdDelta.Packets }),
		u64Col("octetDeltaCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).FwdDelta.Bytes }),
		u64Col("reversePacketTotalCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).Rev.Packets }),
		u64Col("reverseOctetTotalCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).Rev.Bytes }),
		u64Col("reversePacketDeltaCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).RevDelta.Packets }),
		u64Col("reverseOctetDeltaCountFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).RevDelta.Bytes }),
		u64Col("throughputFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).Throughput }),
		u64Col("reverseThroughputFrom"+suffix+"Node", func(r *correlate.Record) uint64 { return side(r).ReverseThroughput }),
		timeCol("flowEndSecondsFrom"+suffix+"Node", func(r *correlate.Record) int64 { return side(r).EndNanos }),
		strCol(strings.ToLower(suffix[:1])+suffix[1:]+"Exporter", func(r *correlate.Record) string { return side(r).Exporter }),
	}
}

// columns is the flows table in order; names follow Antrea's IEs where one
// exists so queries written for Antrea's flow-visibility schema carry over.
var columns = func() []column {
	cs := []column{
		timeCol("flowStartSeconds", func(r *correlate.Record) int64 { return r.StartNanos }),
		timeCol("flowEndSeconds", endNanos),
		u8Col("flowEndReason", func(r *correlate.Record) uint8 { return uint8(r.EndReason) }),
		strCol("sourceIP", func(r *correlate.Record) string { return r.Tuple.Src().String() }),
		strCol("destinationIP", func(r *correlate.Record) string { return r.Tuple.Dst().String() }),
		u16Col("sourceTransportPort", func(r *correlate.Record) uint16 { return r.Tuple.SrcPort }),
		u16Col("destinationTransportPort", func(r *correlate.Record) uint16 { return r.Tuple.DstPort }),
		u8Col("protocolIdentifier", func(r *correlate.Record) uint8 { return r.Tuple.Proto }),
		u64Col("packetTotalCount", func(r *correlate.Record) uint64 { return r.Fwd.Packets }),
		u64Col("octetTotalCount", func(r *correlate.Record) uint64 { return r.Fwd.Bytes }),
		u64Col("packetDeltaCount", func(r *correlate.Record) uint64 { return r.FwdDelta.Packets }),
		u64Col("octetDeltaCount", func(r *correlate.Record) uint64 { return r.FwdDelta.Bytes }),
		u64Col("reversePacketTotalCount", func(r *correlate.Record) uint64 { return r.Rev.Packets }),
		u64Col("reverseOctetTotalCount", func(r *correlate.Record) uint64 { return r.Rev.Bytes }),
		u64Col("reversePacketDeltaCount", func(r *correlate.Record) uint64 { return r.RevDelta.Packets }),
		u64Col("reverseOctetDeltaCount", func(r *correlate.Record) uint64 { return r.RevDelta.Bytes }),
		u64Col("throughput", func(r *correlate.Record) uint64 { return r.Throughput }),
		u64Col("reverseThroughput", func(r *correlate.Record) uint64 { return r.ReverseThroughput }),
	}
	cs = append(cs, sideCols("Source", func(r *correlate.Record) *correlate.Side { return &r.FromSource })...)
	cs = append(cs, sideCols("Destination", func(r *correlate.Record) *correlate.Side { return &r.FromDestination })...)
	cs = append(cs,
		strCol("sourcePodName", func(r *correlate.Record) string { return r.Source.PodName }),
		lowStrCol("sourcePodNamespace", func(r *correlate.Record) string { return r.Source.PodNamespace }),
		lowStrCol("sourceNodeName", func(r *correlate.Record) string { return r.Source.NodeName }),
		strCol("sourcePodLabels", func(r *correlate.Record) string { return r.Source.Labels }),
		strCol("destinationPodName", func(r *correlate.Record) string { return r.Destination.PodName }),
		lowStrCol("destinationPodNamespace", func(r *correlate.Record) string { return r.Destination.PodNamespace }),
		lowStrCol("destinationNodeName", func(r *correlate.Record) string { return r.Destination.NodeName }),
		strCol("destinationPodLabels", func(r *correlate.Record) string { return r.Destination.Labels }),
		strCol("destinationClusterIP", func(r *correlate.Record) string {
			if !r.ClusterIP {
				return ""
			}
			return addrString(r.OrigDstIP)
		}),
		strCol("destinationServiceIP", serviceIP),
		u16Col("destinationServicePort", func(r *correlate.Record) uint16 {
			if !r.IsDNATed() {
				return 0
			}
			return r.OrigDstPort
		}),
		lowStrCol("destinationServicePortName", func(r *correlate.Record) string { return r.ServicePortName }),
		u8Col("flowType", func(r *correlate.Record) uint8 { return uint8(r.FlowType) }),
		lowStrCol("tcpState", func(r *correlate.Record) string { return r.TCPState.String() }),
		lowStrCol("correlation", func(r *correlate.Record) string { return r.Correlation.String() }),
		lowStrCol("appProtocolName", func(r *correlate.Record) string { return r.L7.AppProtocolName }),
		strCol("httpVals", func(r *correlate.Record) string { return r.L7.HTTPVals }),
		strCol("dnsQueryName", func(r *correlate.Record) string { return r.L7.DNSQueryName }),
		lowStrCol("dnsQueryType", func(r *correlate.Record) string { return r.L7.DNSQueryType }),
		lowStrCol("dnsResponseCode", func(r *correlate.Record) string { return r.L7.DNSResponseCode }),
		strCol("dnsAnswers", func(r *correlate.Record) string { return r.L7.DNSAnswers }),
		strCol("tlsServerName", func(r *correlate.Record) string { return r.L7.TLSServerName }),
		lowStrCol("tlsVersion", func(r *correlate.Record) string { return r.L7.TLSVersion }),
		strCol("tlsJA3", func(r *correlate.Record) string { return r.L7.TLSJA3 }),
		strCol("tlsJA3S", func(r *correlate.Record) string { return r.L7.TLSJA3S }),
		strCol("tlsJA4", func(r *correlate.Record) string { return r.L7.TLSJA4 }),
		column{name: "aggregator", typ: "String", lowCard: true, build: func(rs []*correlate.Record, bi *batchInfo) any {
			out := make([]string, len(rs))
			for i := range out {
				out[i] = bi.aggregator
			}
			return out
		}},
		column{name: "batchId", typ: "UInt64", build: func(rs []*correlate.Record, bi *batchInfo) any {
			out := make([]uint64, len(rs))
			for i := range out {
				out[i] = bi.batchID
			}
			return out
		}},
	)
	return cs
}()

// CreateTableSQL is the DDL of the flows table for a server of version v.
// timeInserted is filled by the server, once per insert, so one batch lands
// in one partition and is committed (or not) as a whole: what the retry
// check for an ambiguous failure relies on.
func CreateTableSQL(database, table string, v Version) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s.%s (\n", quoteIdent(database), quoteIdent(table))
	b.WriteString("  timeInserted DateTime DEFAULT now(),\n")
	for i, c := range columns {
		fmt.Fprintf(&b, "  %s %s", c.name, c.typeFor(v))
		if i < len(columns)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(") ENGINE = MergeTree()\nPARTITION BY toYYYYMMDD(timeInserted)\nORDER BY (timeInserted, flowEndSeconds)")
	return b.String()
}

// AddColumnSQL adds a column that an older flowlens did not create.
func AddColumnSQL(database, table, name, typ string) string {
	return fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s", quoteIdent(database), quoteIdent(table), name, typ)
}

// InsertSQL names every column: clickhouse-go against 18.16 needs the
// explicit list.
func InsertSQL(database, table string) string {
	names := make([]string, len(columns))
	for i, c := range columns {
		names[i] = c.name
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", quoteIdent(database), quoteIdent(table), strings.Join(names, ", "))
}

// ColumnNames lists the columns the aggregator writes, in order.
func ColumnNames() []string {
	names := make([]string, len(columns))
	for i, c := range columns {
		names[i] = c.name
	}
	return names
}

func quoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "\\`") + "`"
}
