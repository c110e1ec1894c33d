// Package servicemap reads the service map and the flows behind it from
// the aggregator's ClickHouse table (pkg/sink/clickhouse): nodes are
// workloads, pods without one, Services and external peers; edges carry
// both directions' bytes and packets, connections and L7 counts over a
// time window. It answers from the per-minute rollup the aggregator keeps
// (RollupTable) when that covers the window, else from raw rows.
//
// Every value a caller gives reaches the server as a bound argument
// (clickhouse-go's client-side binding: quoted and escaped by the driver,
// since 18.16 has no server-side parameters); identifiers are this
// package's own or the operator's flags, quoted.
package servicemap

import "strings"

// The node identity, as SQL over one raw row. It is defined once here:
// the raw map query, the flow filters by node or edge and the rollup's
// materialized view (pkg/sink/clickhouse) all use these expressions, so a
// node id the map shows selects exactly the rows it was computed from.
//
// A side with a pod is its workload (w:ns/kind/name), or the pod
// (p:ns/pod) when the pod has no workload. A destination reached through
// a Service is the Service (s:ns/name, the port name cut off). A side
// without a pod is external (x:...): the source by its IP, the
// destination by the TLS server name its client sent, else its IP. Only
// connection-level fields name a node: every row of a connection carries
// the same TLS server name, whereas the HTTP host is per transaction (a
// row without a request in its interval has none), so naming by it would
// split one connection over two nodes. A server name longer than
// MaxExternalNameLen falls back to the IP, so every node id the map
// returns is one ParseNodeID accepts.
const (
	// SourceNodeExpr is the source node id of a raw row.
	SourceNodeExpr = `multiIf(sourcePodName != '', ` +
		`if(sourceWorkloadName != '', concat('w:', sourcePodNamespace, '/', sourceWorkloadKind, '/', sourceWorkloadName), ` +
		`concat('p:', sourcePodNamespace, '/', sourcePodName)), ` +
		`concat('x:', sourceIP))`
	// DestinationNodeExpr is the destination node id of a raw row.
	DestinationNodeExpr = `multiIf(destinationServicePortName != '', concat('s:', replaceRegexpOne(destinationServicePortName, ':[^:/]*$', '')), ` +
		`destinationPodName != '', ` +
		`if(destinationWorkloadName != '', concat('w:', destinationPodNamespace, '/', destinationWorkloadKind, '/', destinationWorkloadName), ` +
		`concat('p:', destinationPodNamespace, '/', destinationPodName)), ` +
		`concat('x:', if(tlsServerName != '' AND length(tlsServerName) <= ` + maxExternalNameLenSQL + `, tlsServerName, destinationIP)))`
	// SourceNamespaceExpr is the namespace of the source node ('' when external).
	SourceNamespaceExpr = `sourcePodNamespace`
	// DestinationNamespaceExpr is the namespace of the destination node:
	// the Service's, else the pod's ('' when external).
	DestinationNamespaceExpr = `if(destinationServicePortName != '', replaceRegexpOne(destinationServicePortName, '/.*$', ''), destinationPodNamespace)`
	// PortExpr is an edge's port: the port the destination pod (or
	// external peer) received on, after any Service DNAT.
	PortExpr = `destinationTransportPort`
	// ProtocolExpr is an edge's IP protocol number.
	ProtocolExpr = `protocolIdentifier`
	// AppProtocolExpr is what the L7 stage recognised ('' when nothing).
	AppProtocolExpr = `appProtocolName`
	// TimeExpr is the time a row counts at: the end of the interval its
	// delta counters cover.
	TimeExpr = `flowEndSeconds`
)

// MaxExternalNameLen bounds a TLS server name used as an external node's
// name: a DNS name has at most 253 bytes; a longer one is not a host name
// and the node is named by its IP.
const MaxExternalNameLen = 253

const maxExternalNameLenSQL = "253"

// Counter is one edge counter: its name in the rollup and in the API, the
// aggregate function (sum or uniq) and its arguments over one raw row.
type Counter struct {
	Name string
	Agg  string
	Expr string
}

// Aggregates of Counter.Agg.
const (
	AggSum  = "sum"
	AggUniq = "uniq"
)

// Raw is the counter computed from raw rows (Expr over the table's columns).
func (c Counter) Raw() string { return c.Agg + "(" + c.Expr + ")" }

// State is the rollup view's expression: the aggregate's state. Sums are
// over UInt64, so the state's type does not depend on the column's.
func (c Counter) State() string {
	if c.Agg == AggSum {
		return "sumState(toUInt64(" + c.Expr + "))"
	}
	return c.Agg + "State(" + c.Expr + ")"
}

// Merge reads the counter from the rollup's column of states.
func (c Counter) Merge() string { return c.Agg + "Merge(" + c.Name + ")" }

// Type is the rollup column's type.
func (c Counter) Type() string {
	if c.Agg == AggSum {
		return "AggregateFunction(sum, UInt64)"
	}
	return "AggregateFunction(uniq, UInt64, DateTime)"
}

// Counters are the edge counters, in the API's order. Bytes and packets
// sum the delta counters, which the aggregator stores once per interval
// (each input in exactly one row), so a sum over any set of rows counts
// each byte once. Connections are the connections active in the window:
// distinct (connectionKey, flowStartSeconds) among its rows, so a
// connection counts once however many rows it has in the window (interim
// exports, idle-timeout exports of a paused connection that resumed, its
// end) and in every window it was active in. uniq is used for raw rows as
// for the rollup's states, so both give the same number for the same rows
// (exact for small counts; beyond tens of thousands of connections per
// edge an estimate within about 1%).
func Counters() []Counter {
	return []Counter{
		{"bytes", AggSum, "octetDeltaCount"},
		{"reverseBytes", AggSum, "reverseOctetDeltaCount"},
		{"packets", AggSum, "packetDeltaCount"},
		{"reversePackets", AggSum, "reversePacketDeltaCount"},
		{"connections", AggUniq, "connectionKey, flowStartSeconds"},
		{"requests", AggSum, "httpRequests"},
		{"http4xx", AggSum, "http4xx"},
		{"http5xx", AggSum, "http5xx"},
		{"dnsErrors", AggSum, "dnsErrors"},
	}
}

// rawColumns are the columns the counters read from raw rows.
func rawColumns() []string {
	return []string{"octetDeltaCount", "reverseOctetDeltaCount", "packetDeltaCount", "reversePacketDeltaCount",
		"connectionKey", "flowStartSeconds", "httpRequests", "http4xx", "http5xx", "dnsErrors"}
}

// RollupTable is the rollup's name for a flows table (in cluster mode the
// Distributed table over the shards' rollups).
func RollupTable(table string) string { return table + "_rollup" }

// RollupView is the materialized view that fills the rollup. Its creation
// time (system.tables.metadata_modification_time) is where the rollup
// starts: rows inserted before it never reached the rollup.
func RollupView(table string) string { return table + "_rollup_mv" }

// RollupKey lists the rollup's key columns with the raw-row expression
// each one is, in ORDER BY order.
func RollupKey() []Counter {
	return []Counter{
		{Name: "minute", Expr: "toStartOfMinute(" + TimeExpr + ")"},
		{Name: "sourceNode", Expr: SourceNodeExpr},
		{Name: "destinationNode", Expr: DestinationNodeExpr},
		{Name: "port", Expr: PortExpr},
		{Name: "protocol", Expr: ProtocolExpr},
		{Name: "appProtocol", Expr: AppProtocolExpr},
		{Name: "sourceNamespace", Expr: SourceNamespaceExpr},
		{Name: "destinationNamespace", Expr: DestinationNamespaceExpr},
	}
}

// QuoteIdent quotes a table or database name.
func QuoteIdent(s string) string {
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(s) + "`"
}
