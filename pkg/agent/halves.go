package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
)

// antreaHalves sits in front of the Sink in export.collectorKind: antrea
// and sends only the records an Antrea agent on this node would export,
// shaped as it would shape them: an end keeps its Kubernetes identity only
// if it is a pod on this node.
//
// Antrea's Flow Aggregator tells the two halves of an inter-node connection
// apart by which pod names are set, and only by that: a record is the
// source node's when sourcePodName is set and destinationPodName is empty,
// and every other record counts as the destination node's
// (isRecordFromSrc/isRecordFromDst in
// pkg/flowaggregator/intermediate/aggregate.go, Antrea v2.5.3). Its agents
// resolve addresses against their own node's pods only
// (connectionStore.fillPodInfo in pkg/agent/flowexporter/connections/
// connections.go) and set source/destinationNodeName only for an end whose
// pod name they resolved (ipfixExporter.addConnToSet in
// pkg/agent/flowexporter/exporter/ipfix.go). A flowlens agent knows both
// pods, so without clearing FA files both halves as the destination's and
// reports 0 for every *FromSourceNode counter.
//
// Clearing alone is not enough: it is what makes the records FA does get
// right, not every record an agent sees. Antrea's agents do not export a
// connection whose source is not a pod, nor a connection to a non-pod
// address unless its source is a pod on the exporting node
// (FlowExporter.findFlowType and exportConn in
// pkg/agent/flowexporter/exporter.go, v2.5.3). Cleared, such a record
// (node-a's host to a pod on node-b, say) would carry no names at all and
// FA would file node-a's half as the destination's and mix both nodes'
// counters on that side. So those records are skipped and counted.
//
// The skip happens here, after the connection store and the expire queue
// have taken the record as exported: their end-of-flow accounting is the
// same in both modes, only the wire differs.
//
// On a record that is sent, a destination that is not a pod makes the
// flowType to-external, as Antrea's findFlowType has it; nothing else
// changes: the Service, counters and L7 fields are the same in both modes,
// and an intra-node connection keeps both ends.
type antreaHalves struct {
	node    string // this agent's node name (agentconfig.Config.NodeName)
	next    Sink
	skipped prometheus.Counter
	// shaped is the record as sent: the caller's stays as it was, so a
	// record the sink refuses is shaped again from the whole one when it
	// is offered again (shaping it twice would skip it as a record whose
	// source is no pod). Only the loop goroutine exports.
	shaped flow.Record
}

// newAntreaHalves wraps next; the skip counter is registered on reg (nil:
// counted, not registered).
func newAntreaHalves(node string, next Sink, reg prometheus.Registerer) (*antreaHalves, error) {
	h := &antreaHalves{
		node: node,
		next: next,
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_antrea_mode_skipped_records_total",
			Help: "Records not exported in export.collectorKind: antrea because an Antrea agent would not export them (source not a pod, or a non-pod destination and a source that is not a pod on this node).",
		}),
	}
	if reg != nil {
		if err := reg.Register(h.skipped); err != nil {
			return nil, fmt.Errorf("register antrea mode metrics: %w", err)
		}
	}
	return h, nil
}

// Export sends r as this node's Antrea agent would, or skips it. A skip is
// counted and reports true (taken): false would mean the sink refused it
// and make the loop offer it again.
func (h *antreaHalves) Export(r *flow.Record) bool {
	h.shaped = *r
	if !h.shape(&h.shaped) {
		h.skipped.Inc()
		return true
	}
	return h.next.Export(&h.shaped)
}

// Accepts reports whether next would take r now (a record that will be
// skipped is taken too, but deciding that needs the enrichment).
func (h *antreaHalves) Accepts(r *flow.Record) bool {
	a, ok := h.next.(acceptingSink)
	return !ok || a.Accepts(r)
}

// shape reports whether an Antrea agent on this node would export r and,
// if so, clears its ends that are not pods of this node. It decides on the
// ends as the context source filled them, before anything is cleared.
//
// A source or destination is a pod when the context source named one.
// Antrea asks whether the address is in a pod subnet instead; the two
// differ only for a pod address the context source cannot name (a pod
// deleted longer ago than the grace period), which is skipped here where
// Antrea would export it without names. A hostNetwork pod's address is its
// node's: not a pod for either.
func (h *antreaHalves) shape(r *flow.Record) bool {
	srcPod := r.Source.PodName != ""
	dstPod := r.Destination.PodName != ""
	if !srcPod {
		return false
	}
	if !dstPod && !h.isLocalPod(&r.Source) {
		// Antrea's to-external rule: only the source pod's node exports.
		return false
	}
	if !dstPod {
		// Antrea's flowType for it: to-external, whatever flowlens says
		// (inter-node for another node's address). FA correlates only
		// inter-node records and deletes one that finds no other half
		// (MaxRetries in aggregate.go), and the destination's node sends
		// none here.
		r.FlowType = flow.FlowTypeToExternal
	}
	h.keepLocalPod(&r.Source)
	h.keepLocalPod(&r.Destination)
	return true
}

func (h *antreaHalves) isLocalPod(e *flow.Endpoint) bool {
	return e.PodName != "" && e.NodeName == h.node
}

// keepLocalPod clears e unless it is a pod on this node. A node or host
// end loses its node name too: Antrea exports a node name only beside a
// pod name. Labels go with the pod name, as a remote pod's labels are
// nothing an Antrea agent could know (its FA looks them up itself).
func (h *antreaHalves) keepLocalPod(e *flow.Endpoint) {
	if h.isLocalPod(e) {
		return
	}
	*e = flow.Endpoint{}
}
