// Package correlate turns the records that agents export into one record per
// connection: the two halves of an inter-node connection (one from the node of
// the source pod, one from the node of the destination pod) are merged, and
// repeated reports of the same connection are aggregated behind the
// aggregator's own active and inactive timeouts.
//
// Key: the 5-tuple (flow.Tuple, which both nodes report the same way, DNAT
// already undone) plus the start time: records of one tuple whose starts lie
// within StartWindow are the same connection, so clock skew between nodes
// is absorbed and a reused port is a new connection. A half that carries a
// proxy SNAT (a NodePort from outside) is keyed by the tuple the backend's
// node sees, flow.Conn.CorrelationTuple; the row keeps the client's tuple.
//
// Sides: a record carrying only the source pod comes from the source node,
// only the destination pod from the destination node (Antrea's agents fill
// local pods only); with both or neither, the exporter's identity decides.
//
// Timing: an inter-node half waits up to CorrelationWait for its peer, then
// is exported alone with StatusUnmatched (and merged with the peer should it
// still come). Intra-node, to-external and from-external records never wait
// for a peer, except a from-external half its node source-NATed to an
// endpoint not known to be on that node (NodePort, LoadBalancer). Every connection is then exported on the aggregator's active
// timeout, inactive timeout, or at once when every node reporting it said
// end-of-flow (a correlated connection waits at most CorrelationWait for
// the second end). An ended one-node connection with nothing held passes
// straight through.
//
// L7: httpVals of both halves are united by transaction id into one valid
// JSON object (an empty or invalid value never wipes a valid one); every
// other flow.L7 field takes the non-empty value.
package correlate

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// Input is one record as the collector decoded it, with the identity of the
// agent that sent it. Exporter tells the halves of a connection apart when
// the Kubernetes fields alone cannot (agents that know both pods).
type Input struct {
	Record   flow.Record
	Exporter string
	// ExporterNode is the exporting agent's node name when the collector
	// could tell it (see flow.DefaultObservationDomainID); it decides which
	// side a half is when the half names both pods.
	ExporterNode string
	// Seq is the record's number in the aggregator's write-ahead log, 0
	// when it has none. The row that includes the record names it in
	// Record.Seqs, so the log learns when every sink has written it.
	Seq uint64
}

// Status says how a record was correlated.
type Status uint8

// Correlation statuses.
const (
	// StatusNotRequired: one node saw both ends (intra-node, to/from-external).
	StatusNotRequired Status = iota
	// StatusCorrelated: both halves of an inter-node connection were merged.
	StatusCorrelated
	// StatusUnmatched: an inter-node half whose peer did not arrive within
	// the correlation wait; only one side's fields are filled.
	StatusUnmatched
)

func (s Status) String() string {
	switch s {
	case StatusNotRequired:
		return "not-required"
	case StatusCorrelated:
		return "correlated"
	case StatusUnmatched:
		return "unmatched"
	}
	return "unknown"
}

// Side is what one node reported about a connection, exported as Antrea's
// ...FromSourceNode / ...FromDestinationNode elements.
type Side struct {
	Seen     bool
	Exporter string
	// Fwd and Rev are the latest totals the node reported.
	Fwd, Rev flow.Counters
	// FwdDelta and RevDelta sum the node's deltas since the aggregator's
	// previous export of the connection.
	FwdDelta, RevDelta flow.Counters
	// Throughput and ReverseThroughput are bits per second over the interval
	// the deltas cover.
	Throughput, ReverseThroughput uint64
	// EndNanos is the latest flowEnd the node reported (Unix ns).
	EndNanos int64
	// Ended is set once the node reported end-of-flow.
	Ended bool
}

// Record is one aggregated connection. The embedded flow.Record holds the
// merged view: Source fields from the source node, Destination fields from
// the destination node, L7 from both; its counters are the source node's
// when it reported (it counts before any drop on the way), else the
// destination node's. EndReason is the aggregator's own export reason.
type Record struct {
	flow.Record
	FromSource      Side
	FromDestination Side
	// Throughput and ReverseThroughput (bits/s) go with the main counters.
	Throughput, ReverseThroughput uint64
	Correlation                   Status
	// L7 counts of this row (HTTP transactions, their 4xx/5xx, DNS
	// errors), from the merged L7 it carries; set when the row is exported.
	L7Counts L7Counts
	// Seqs are the Input.Seq of every input whose counters this row is
	// the first to carry; each numbered input is in exactly one row.
	Seqs []uint64
}
