package agent

import "github.com/flowlens/flowlens/pkg/flow"

// antreaHalves makes every record look like the half an Antrea agent on
// this node would export (export.collectorKind: antrea): an end keeps its
// Kubernetes identity only if it is a pod on this node.
//
// Antrea's Flow Aggregator tells the two halves of an inter-node connection
// apart by which pod names are set, and only by that: a record is the
// source node's when sourcePodName is set and destinationPodName is empty,
// and every other record counts as the destination node's
// (isRecordFromSrc/isRecordFromDst in
// pkg/flowaggregator/intermediate/aggregate.go, Antrea v2.5.3). Its agents
// produce exactly that shape because they resolve addresses against their
// own node's pods only (connectionStore.fillPodInfo in
// pkg/agent/flowexporter/connections/connections.go, a pod store built
// from the local-pod informer in cmd/antrea-agent/agent.go) and set
// source/destinationNodeName only for an end whose pod name they resolved
// (ipfixExporter.addConnToSet in pkg/agent/flowexporter/exporter/ipfix.go).
// A flowlens agent knows both pods, so without this step Antrea's FA files
// both halves as the destination's and reports 0 for every *FromSourceNode
// counter.
//
// Nothing else changes: the Service, flowType, counters and L7 fields are
// the same in both modes, and an intra-node connection keeps both ends.
type antreaHalves struct {
	node string // this agent's node name (agentconfig.Config.NodeName)
}

func newAntreaHalves(node string) antreaHalves { return antreaHalves{node: node} }

// Enrich clears the ends that are not pods of this node. It runs after the
// context source, which is what filled them.
func (h antreaHalves) Enrich(r *flow.Record) {
	h.keepLocalPod(&r.Source)
	h.keepLocalPod(&r.Destination)
}

// keepLocalPod clears e unless it is a pod on this node. A node or host
// end loses its node name too: Antrea exports a node name only beside a
// pod name. Labels go with the pod name, as a remote pod's labels are
// nothing an Antrea agent could know (its FA looks them up itself).
func (h antreaHalves) keepLocalPod(e *flow.Endpoint) {
	if e.PodName != "" && e.NodeName == h.node {
		return
	}
	*e = flow.Endpoint{}
}
