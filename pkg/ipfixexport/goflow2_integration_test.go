//go:build integration

package ipfixexport

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// goflow2Mapping makes goflow2 decode what its default mapping leaves out:
// the totals, flowEndReason, the RFC 5103 reverse counters (enterprise
// 29305) and Antrea's Kubernetes IEs (enterprise 56506). goflow2 decodes
// enterprise-specific fields only through such a mapping.
const goflow2Mapping = `formatter:
  fields: [type, time_flow_start_ns, time_flow_end_ns, bytes, packets, src_addr, dst_addr, etype, proto, src_port, dst_port,
    flow_end_reason, packet_total, octet_total, rev_packets, rev_bytes, rev_packet_total, rev_octet_total,
    source_pod_name, source_pod_namespace, source_node_name, destination_pod_name, destination_pod_namespace,
    destination_node_name, destination_service_port_name, destination_service_port, tcp_state, flow_type, app_protocol_name]
  protobuf:
    - {name: flow_end_reason, index: 1001, type: varint}
    - {name: packet_total, index: 1002, type: varint}
    - {name: octet_total, index: 1003, type: varint}
    - {name: rev_packets, index: 1004, type: varint}
    - {name: rev_bytes, index: 1005, type: varint}
    - {name: rev_packet_total, index: 1006, type: varint}
    - {name: rev_octet_total, index: 1007, type: varint}
    - {name: source_pod_name, index: 1101, type: string}
    - {name: source_pod_namespace, index: 1102, type: string}
    - {name: source_node_name, index: 1103, type: string}
    - {name: destination_pod_name, index: 1104, type: string}
    - {name: destination_pod_namespace, index: 1105, type: string}
    - {name: destination_node_name, index: 1106, type: string}
    - {name: destination_service_port_name, index: 1107, type: string}
    - {name: destination_service_port, index: 1108, type: varint}
    - {name: tcp_state, index: 1109, type: string}
    - {name: flow_type, index: 1110, type: varint}
    - {name: app_protocol_name, index: 1111, type: string}
  render:
    source_pod_name: string
    source_pod_namespace: string
    source_node_name: string
    destination_pod_name: string
    destination_pod_namespace: string
    destination_node_name: string
    destination_service_port_name: string
    tcp_state: string
    app_protocol_name: string
ipfix:
  mapping:
    - {field: 136, destination: flow_end_reason}
    - {field: 86, destination: packet_total}
    - {field: 85, destination: octet_total}
    - {field: 2, penprovided: true, pen: 29305, destination: rev_packets}
    - {field: 1, penprovided: true, pen: 29305, destination: rev_bytes}
    - {field: 86, penprovided: true, pen: 29305, destination: rev_packet_total}
    - {field: 85, penprovided: true, pen: 29305, destination: rev_octet_total}
    - {field: 101, penprovided: true, pen: 56506, destination: source_pod_name}
    - {field: 100, penprovided: true, pen: 56506, destination: source_pod_namespace}
    - {field: 104, penprovided: true, pen: 56506, destination: source_node_name}
    - {field: 103, penprovided: true, pen: 56506, destination: destination_pod_name}
    - {field: 102, penprovided: true, pen: 56506, destination: destination_pod_namespace}
    - {field: 105, penprovided: true, pen: 56506, destination: destination_node_name}
    - {field: 109, penprovided: true, pen: 56506, destination: destination_service_port_name}
    - {field: 108, penprovided: true, pen: 56506, destination: destination_service_port}
    - {field: 136, penprovided: true, pen: 56506, destination: tcp_state}
    - {field: 137, penprovided: true, pen: 56506, destination: flow_type}
    - {field: 155, penprovided: true, pen: 56506, destination: app_protocol_name}
`

// goflow2Flow is one line of goflow2's JSON output.
type goflow2Flow struct {
	Type                       string `json:"type"`
	TimeFlowStartNs            uint64 `json:"time_flow_start_ns"`
	TimeFlowEndNs              uint64 `json:"time_flow_end_ns"`
	Bytes, Packets             uint64
	SrcAddr                    string `json:"src_addr"`
	DstAddr                    string `json:"dst_addr"`
	Proto                      string `json:"proto"`
	SrcPort                    uint16 `json:"src_port"`
	DstPort                    uint16 `json:"dst_port"`
	FlowEndReason              uint8  `json:"flow_end_reason"`
	PacketTotal                uint64 `json:"packet_total"`
	OctetTotal                 uint64 `json:"octet_total"`
	RevPackets                 uint64 `json:"rev_packets"`
	RevBytes                   uint64 `json:"rev_bytes"`
	RevPacketTotal             uint64 `json:"rev_packet_total"`
	RevOctetTotal              uint64 `json:"rev_octet_total"`
	SourcePodName              string `json:"source_pod_name"`
	SourcePodNamespace         string `json:"source_pod_namespace"`
	SourceNodeName             string `json:"source_node_name"`
	DestinationPodName         string `json:"destination_pod_name"`
	DestinationPodNamespace    string `json:"destination_pod_namespace"`
	DestinationNodeName        string `json:"destination_node_name"`
	DestinationServicePortName string `json:"destination_service_port_name"`
	DestinationServicePort     uint16 `json:"destination_service_port"`
	TCPState                   string `json:"tcp_state"`
	FlowType                   uint8  `json:"flow_type"`
	AppProtocolName            string `json:"app_protocol_name"`
}

// goflow2Want is what goflow2 must show for r.
func goflow2Want(r *flow.Record) goflow2Flow {
	startMs, endMs := wireMillis(r)
	svcPort := uint16(0)
	if r.IsDNATed() {
		svcPort = r.OrigDstPort
	}
	return goflow2Flow{
		Type:            "IPFIX",
		TimeFlowStartNs: startMs * 1e6, TimeFlowEndNs: endMs * 1e6,
		Bytes: r.FwdDelta.Bytes, Packets: r.FwdDelta.Packets,
		SrcAddr: addrString(r.Tuple.SrcIP), DstAddr: addrString(r.Tuple.DstIP),
		Proto:   map[uint8]string{flow.ProtoTCP: "TCP", flow.ProtoUDP: "UDP"}[r.Tuple.Proto],
		SrcPort: r.Tuple.SrcPort, DstPort: r.Tuple.DstPort,
		FlowEndReason: uint8(r.EndReason),
		PacketTotal:   r.Fwd.Packets, OctetTotal: r.Fwd.Bytes,
		RevPackets: r.RevDelta.Packets, RevBytes: r.RevDelta.Bytes,
		RevPacketTotal: r.Rev.Packets, RevOctetTotal: r.Rev.Bytes,
		SourcePodName: r.Source.PodName, SourcePodNamespace: r.Source.PodNamespace, SourceNodeName: r.Source.NodeName,
		DestinationPodName: r.Destination.PodName, DestinationPodNamespace: r.Destination.PodNamespace,
		DestinationNodeName:        r.Destination.NodeName,
		DestinationServicePortName: r.ServicePortName, DestinationServicePort: svcPort,
		TCPState: r.TCPState.String(), FlowType: uint8(r.FlowType), AppProtocolName: r.L7.AppProtocolName,
	}
}

// goflow2 (NetFlow/IPFIX over UDP) decodes every record exactly: 5-tuple,
// delta and total counters of both directions, millisecond start and end
// times, flowEndReason and each node's half of Antrea's Kubernetes fields.
// With L7DetailElements the enterprise-32473 fields are skipped by their
// template length and the rest is unchanged.
func TestGoflow2DecodesExportedRecords(t *testing.T) {
	goflow2 := requireProgram(t, "goflow2")
	for _, opts := range interopOptions {
		t.Run(opts.String(), func(t *testing.T) {
			dir := t.TempDir()
			mapping := filepath.Join(dir, "mapping.yaml")
			if err := os.WriteFile(mapping, []byte(goflow2Mapping), 0o600); err != nil {
				t.Fatal(err)
			}
			outFile := filepath.Join(dir, "flows.json")
			port := freeUDPPort(t)
			log, stop := startDaemon(t, syscall.SIGTERM, goflow2,
				// One worker: with several, a data message can be decoded
				// before the template message sent just ahead of it, and
				// goflow2 drops it ("template error") until a refresh.
				"-listen", "netflow://127.0.0.1:"+strconv.Itoa(port)+"?count=1&workers=1",
				"-addr", "127.0.0.1:0", // its metrics server; the default :8080 may be taken
				"-format", "json", "-mapping", mapping,
				"-transport", "file", "-transport.file", outFile)
			waitUDPBound(t, port, "goflow2", log)

			sent := interopRecords()
			sendRecords(t, port, sent, opts)
			deadline := time.Now().Add(10 * time.Second)
			for len(jsonLines(readFileOrEmpty(outFile))) < len(sent) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			stop()
			compareJSONFlows(t, "goflow2", jsonLines(readFileOrEmpty(outFile)), sent, goflow2Want, func(f goflow2Flow) uint16 { return f.SrcPort })
			if t.Failed() {
				t.Logf("goflow2 output:\n%s\nlog:\n%s", readFileOrEmpty(outFile), log.String())
			}
		})
	}
}
