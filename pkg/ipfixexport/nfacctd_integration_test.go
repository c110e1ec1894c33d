//go:build integration

package ipfixexport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// nfacctdPrimitives defines what pmacct has no primitive for: the totals,
// flowEndReason, the RFC 5103 reverse counters (enterprise 29305) and
// Antrea's Kubernetes IEs (enterprise 56506), variable-length strings
// ("vlen") as the exporter sends them.
const nfacctdPrimitives = `name=flow_end_reason field_type=136 len=1 semantics=u_int
name=packet_total field_type=86 len=8 semantics=u_int
name=octet_total field_type=85 len=8 semantics=u_int
name=rev_packets field_type=29305:2 len=8 semantics=u_int
name=rev_bytes field_type=29305:1 len=8 semantics=u_int
name=rev_packet_total field_type=29305:86 len=8 semantics=u_int
name=rev_octet_total field_type=29305:85 len=8 semantics=u_int
name=source_pod_name field_type=56506:101 len=vlen semantics=str
name=source_pod_namespace field_type=56506:100 len=vlen semantics=str
name=source_node_name field_type=56506:104 len=vlen semantics=str
name=destination_pod_name field_type=56506:103 len=vlen semantics=str
name=destination_pod_namespace field_type=56506:102 len=vlen semantics=str
name=destination_node_name field_type=56506:105 len=vlen semantics=str
name=destination_service_port_name field_type=56506:109 len=vlen semantics=str
name=tcp_state field_type=56506:136 len=vlen semantics=str
name=flow_type field_type=56506:137 len=1 semantics=u_int
`

const nfacctdCustom = "flow_end_reason, packet_total, octet_total, rev_packets, rev_bytes, rev_packet_total, rev_octet_total, " +
	"source_pod_name, source_pod_namespace, source_node_name, destination_pod_name, destination_pod_namespace, " +
	"destination_node_name, destination_service_port_name, tcp_state, flow_type"

// nfacctdFlow is one line of nfacctd's print plugin in JSON; it prints
// custom primitives' numbers as strings.
type nfacctdFlow struct {
	SrcIP                      string `json:"ip_src"`
	DstIP                      string `json:"ip_dst"`
	SrcPort                    uint16 `json:"port_src"`
	DstPort                    uint16 `json:"port_dst"`
	Proto                      string `json:"ip_proto"`
	TimestampStart             string `json:"timestamp_start"`
	TimestampEnd               string `json:"timestamp_end"`
	Packets                    uint64 `json:"packets"`
	Bytes                      uint64 `json:"bytes"`
	FlowEndReason              uint8  `json:"flow_end_reason,string"`
	PacketTotal                uint64 `json:"packet_total,string"`
	OctetTotal                 uint64 `json:"octet_total,string"`
	RevPackets                 uint64 `json:"rev_packets,string"`
	RevBytes                   uint64 `json:"rev_bytes,string"`
	RevPacketTotal             uint64 `json:"rev_packet_total,string"`
	RevOctetTotal              uint64 `json:"rev_octet_total,string"`
	SourcePodName              string `json:"source_pod_name"`
	SourcePodNamespace         string `json:"source_pod_namespace"`
	SourceNodeName             string `json:"source_node_name"`
	DestinationPodName         string `json:"destination_pod_name"`
	DestinationPodNamespace    string `json:"destination_pod_namespace"`
	DestinationNodeName        string `json:"destination_node_name"`
	DestinationServicePortName string `json:"destination_service_port_name"`
	TCPState                   string `json:"tcp_state"`
	FlowType                   uint8  `json:"flow_type,string"`
}

// nfacctdTime is how nfacctd prints a millisecond time with
// timestamps_since_epoch: seconds and microseconds.
func nfacctdTime(ms uint64) string {
	return fmt.Sprintf("%d.%06d", ms/1000, ms%1000*1000)
}

func nfacctdWant(r *flow.Record) nfacctdFlow {
	startMs, endMs := wireMillis(r)
	return nfacctdFlow{
		SrcIP: addrString(r.Tuple.SrcIP), DstIP: addrString(r.Tuple.DstIP),
		SrcPort: r.Tuple.SrcPort, DstPort: r.Tuple.DstPort,
		Proto:          map[uint8]string{flow.ProtoTCP: "tcp", flow.ProtoUDP: "udp"}[r.Tuple.Proto],
		TimestampStart: nfacctdTime(startMs), TimestampEnd: nfacctdTime(endMs),
		Packets: r.FwdDelta.Packets, Bytes: r.FwdDelta.Bytes,
		FlowEndReason: uint8(r.EndReason),
		PacketTotal:   r.Fwd.Packets, OctetTotal: r.Fwd.Bytes,
		RevPackets: r.RevDelta.Packets, RevBytes: r.RevDelta.Bytes,
		RevPacketTotal: r.Rev.Packets, RevOctetTotal: r.Rev.Bytes,
		SourcePodName: r.Source.PodName, SourcePodNamespace: r.Source.PodNamespace, SourceNodeName: r.Source.NodeName,
		DestinationPodName: r.Destination.PodName, DestinationPodNamespace: r.Destination.PodNamespace,
		DestinationNodeName:        r.Destination.NodeName,
		DestinationServicePortName: r.ServicePortName,
		TCPState:                   r.TCPState.String(), FlowType: uint8(r.FlowType),
	}
}

// pmacct's nfacctd decodes every record exactly: 5-tuple, delta and total
// counters of both directions, millisecond start and end times,
// flowEndReason and each node's half of Antrea's Kubernetes fields (as
// custom primitives). With L7DetailElements the enterprise-32473 fields
// are skipped and the rest is unchanged.
func TestNfacctdDecodesExportedRecords(t *testing.T) {
	nfacctd := requireProgram(t, "nfacctd")
	for _, opts := range interopOptions {
		t.Run(opts.String(), func(t *testing.T) {
			dir := t.TempDir()
			primitives := filepath.Join(dir, "primitives.lst")
			outFile := filepath.Join(dir, "flows.json")
			port := freeUDPPort(t)
			conf := fmt.Sprintf(`daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: %d
aggregate_primitives: %s
timestamps_since_epoch: true
plugins: print[flows]
aggregate[flows]: src_host, dst_host, src_port, dst_port, proto, timestamp_start, timestamp_end, %s
print_output[flows]: json
print_output_file[flows]: %s
print_output_file_append[flows]: true
`, port, primitives, nfacctdCustom, outFile)
			confFile := filepath.Join(dir, "nfacctd.conf")
			for f, s := range map[string]string{primitives: nfacctdPrimitives, confFile: conf} {
				if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// SIGINT makes nfacctd flush its plugins' caches and exit.
			log, stop := startDaemon(t, syscall.SIGINT, nfacctd, "-f", confFile)
			waitUDPBound(t, port, "nfacctd", log)

			sent := interopRecords()
			sendRecords(t, port, sent, opts)
			// nfacctd's core hands records to its print plugin in buffers
			// that a few records do not fill, and SIGINT flushes them: stop
			// it once it read every datagram from its socket.
			waitFor(t, 10*time.Second, "nfacctd to read its socket", func() bool { return udpRxQueue(t, port) == 0 })
			time.Sleep(200 * time.Millisecond)
			stop()
			compareJSONFlows(t, "nfacctd", jsonLines(readFileOrEmpty(outFile)), sent, nfacctdWant, func(f nfacctdFlow) uint16 { return f.SrcPort })
			if t.Failed() {
				t.Logf("nfacctd output:\n%s\nlog:\n%s", readFileOrEmpty(outFile), log.String())
			}
		})
	}
}
