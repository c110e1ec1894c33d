// Package sinktest builds aggregated records for the tests of the sink
// packages.
package sinktest

import (
	"fmt"
	"net/netip"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Record is an inter-node connection through a ClusterIP Service with
// every field a column reads filled, different for each i and each field
// (a column reading the wrong field shows), at the edges of their types and
// with strings that need escaping. For i in 0..9 every record encodes to
// the same length.
func Record(i int) *correlate.Record {
	r := &correlate.Record{Correlation: correlate.StatusCorrelated, Throughput: 1001, ReverseThroughput: 1002}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.7"), uint16(10000+i), 8080, flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort, r.ClusterIP = netip.MustParseAddr("10.96.0.1").As16(), 80, true
	start := int64(1_700_000_000_900_000_000) + int64(i)*1e9
	r.StartNanos, r.StopNanos, r.ExportNanos = start, start+60e9, start+61e9
	r.EndReason, r.FlowType, r.TCPState = flow.EndReason(1+i%5), flow.FlowTypeInterNode, flow.TCPStateTimeWait
	r.Fwd = flow.Counters{Packets: 1<<64 - 1 - uint64(i), Bytes: 1 << 40}
	r.Rev = flow.Counters{Packets: 13, Bytes: 1400}
	r.FwdDelta, r.RevDelta = flow.Counters{Packets: 3, Bytes: 300}, flow.Counters{Packets: 5, Bytes: 500}
	r.FromSource = correlate.Side{Seen: true, Exporter: "10.0.0.1/7", Fwd: flow.Counters{Packets: 21, Bytes: 2100},
		Rev: flow.Counters{Packets: 22, Bytes: 2200}, FwdDelta: flow.Counters{Packets: 23, Bytes: 2300},
		RevDelta: flow.Counters{Packets: 24, Bytes: 2400}, Throughput: 25, ReverseThroughput: 26, EndNanos: start + 59e9}
	r.FromDestination = correlate.Side{Seen: true, Exporter: "10.0.0.2/8", Fwd: flow.Counters{Packets: 31, Bytes: 3100},
		Rev: flow.Counters{Packets: 32, Bytes: 3200}, FwdDelta: flow.Counters{Packets: 33, Bytes: 3300},
		RevDelta: flow.Counters{Packets: 34, Bytes: 3400}, Throughput: 35, ReverseThroughput: 36, EndNanos: start + 58e9}
	r.Source = flow.Endpoint{PodName: "client", PodNamespace: "ns-a", NodeName: "node-a", Labels: fmt.Sprintf(`{"app":"c%d","q":"a\"b"}`, i)}
	r.Destination = flow.Endpoint{PodName: "web", PodNamespace: "ns-b", NodeName: "node-b", Labels: "tab\tnewline\n\\ é"}
	r.Source.WorkloadKind, r.Source.WorkloadName = "Deployment", "client"
	r.Destination.WorkloadKind, r.Destination.WorkloadName = "StatefulSet", "w\"eb\t"
	// Distinct values, so a column reading another count shows.
	r.L7Counts = correlate.L7Counts{HTTPRequests: 41, HTTP4xx: 42, HTTP5xx: 43, DNSErrors: 44}
	r.ServicePortName = "ns-b/web:http"
	// Each health field distinct, the first at its type's maximum.
	r.Health = flow.Health{
		RTTMinMicros: 1<<32 - 1 - uint32(i), RTTAvgMicros: 1100 + uint32(i), RTTMaxMicros: 1200 + uint32(i), RTTSamples: 1300 + uint32(i),
		FwdRetransmits: 51, RevRetransmits: 52, FwdResets: 53, RevResets: 54, EstablishMicros: 1400 + uint32(i),
		ZeroWindows: 55, FwdDrops: 56, RevDrops: 57, DropReason: "NETFILTER_DROP",
	}
	r.DestinationName = "api.example.com"
	r.ProxySnatIP, r.ProxySnatPort = netip.MustParseAddr("172.18.0.3").As16(), uint16(40000+i)
	r.ClusterID = "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a"
	r.L7 = flow.L7{AppProtocolName: "http", HTTPVals: `{"0":{"url":"/x?y=\"z\"","hostname":"h\u00e9"}}`,
		DNSQueryName: "q.example", DNSQueryType: "AAAA", DNSResponseCode: "NXDOMAIN", DNSAnswers: "::1,10.0.0.1",
		TLSServerName: "s.example", TLSVersion: "TLS 1.2", TLSJA3: "ja3", TLSJA3S: "ja3s", TLSJA4: "ja4"}
	return r
}
