package ipfixexport

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmware/go-ipfix/pkg/collector"
	"github.com/vmware/go-ipfix/pkg/entities"
	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// recordCases cover both templates and the three ways a destination is
// reported: a ClusterIP Service, a DNATed non-ClusterIP Service (NodePort),
// and a direct pod-to-pod connection.
var recordCases = []struct {
	name   string
	v6     bool
	mutate func(*flow.Record)
}{
	{"IPv4 ClusterIP connection", false, func(*flow.Record) {}},
	{"IPv6 ClusterIP connection", true, func(*flow.Record) {}},
	{"IPv4 NodePort connection without ClusterIP", false, func(r *flow.Record) { r.ClusterIP = false; r.OrigDstPort = 30080 }},
	{"IPv6 direct connection that ended", true, func(r *flow.Record) {
		r.ClusterIP, r.OrigDstIP, r.OrigDstPort = false, r.Tuple.DstIP, r.Tuple.DstPort
		r.EndReason, r.StopNanos, r.TCPState = flow.EndOfFlow, r.StartNanos+5e9, flow.TCPStateTimeWait
		r.L7, r.ServicePortName = flow.L7{}, ""
	}},
}

// wantIEs is the expected IE values of r, written out independently of the
// exporter's table so that a mapping mistake there shows up here.
func wantIEs(r *flow.Record) map[string]string {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	end := r.ExportNanos
	if r.StopNanos != 0 {
		end = r.StopNanos
	}
	fam := "IPv4"
	zero := netip.IPv4Unspecified()
	if !r.Tuple.IsIPv4() {
		fam, zero = "IPv6", netip.IPv6Unspecified()
	}
	cluster, svc, svcPort := zero, zero, uint64(0)
	if r.ClusterIP {
		cluster = r.OrigDst()
	}
	if r.IsDNATed() {
		svc, svcPort = r.OrigDst(), uint64(r.OrigDstPort)
	}
	return map[string]string{
		"flowStartSeconds":              u(uint64(r.StartNanos / 1e9)),
		"flowEndSeconds":                u(uint64(end / 1e9)),
		"flowEndReason":                 u(uint64(r.EndReason)),
		"source" + fam + "Address":      r.Tuple.Src().String(),
		"destination" + fam + "Address": r.Tuple.Dst().String(),
		"sourceTransportPort":           u(uint64(r.Tuple.SrcPort)),
		"destinationTransportPort":      u(uint64(r.Tuple.DstPort)),
		"protocolIdentifier":            u(uint64(r.Tuple.Proto)),
		"packetTotalCount":              u(r.Fwd.Packets),
		"octetTotalCount":               u(r.Fwd.Bytes),
		"packetDeltaCount":              u(r.FwdDelta.Packets),
		"octetDeltaCount":               u(r.FwdDelta.Bytes),
		"reversePacketTotalCount":       u(r.Rev.Packets),
		"reverseOctetTotalCount":        u(r.Rev.Bytes),
		"reversePacketDeltaCount":       u(r.RevDelta.Packets),
		"reverseOctetDeltaCount":        u(r.RevDelta.Bytes),
		"sourcePodName":                 r.Source.PodName,
		"sourcePodNamespace":            r.Source.PodNamespace,
		"sourceNodeName":                r.Source.NodeName,
		"destinationPodName":            r.Destination.PodName,
		"destinationPodNamespace":       r.Destination.PodNamespace,
		"destinationNodeName":           r.Destination.NodeName,
		"destinationCluster" + fam:      cluster.String(),
		"destinationServicePort":        u(svcPort),
		"destinationServicePortName":    r.ServicePortName,
		"destinationService" + fam:      svc.String(),
		"tcpState":                      r.TCPState.String(),
		"flowType":                      u(uint64(r.FlowType)),
		"appProtocolName":               r.L7.AppProtocolName,
		"httpVals":                      r.L7.HTTPVals,
	}
}

func goIPFIXValue(ie entities.InfoElementWithValue) string {
	switch ie.GetDataType() {
	case entities.Unsigned8:
		return strconv.FormatUint(uint64(ie.GetUnsigned8Value()), 10)
	case entities.Unsigned16:
		return strconv.FormatUint(uint64(ie.GetUnsigned16Value()), 10)
	case entities.Unsigned32, entities.DateTimeSeconds:
		return strconv.FormatUint(uint64(ie.GetUnsigned32Value()), 10)
	case entities.Unsigned64:
		return strconv.FormatUint(ie.GetUnsigned64Value(), 10)
	case entities.String:
		return ie.GetStringValue()
	case entities.Ipv4Address, entities.Ipv6Address:
		a, _ := netip.AddrFromSlice(ie.GetIPAddressValue())
		return a.Unmap().String()
	}
	return fmt.Sprintf("unexpected type %d", ie.GetDataType())
}

func TestEveryIEDecodesWithGoIPFIXCollector(t *testing.T) {
	registry.LoadRegistry()
	for _, tc := range recordCases {
		t.Run(tc.name, func(t *testing.T) {
			cp, err := collector.InitCollectingProcess(collector.CollectorInput{
				Address: "127.0.0.1:0", Protocol: "tcp", MaxBufferSize: 65535, DecodingMode: collector.DecodingModeStrict,
			})
			if err != nil {
				t.Fatal(err)
			}
			go cp.Start()
			waitFor(t, 5*time.Second, "go-ipfix collector address", func() bool { return cp.GetAddress() != nil })
			got := make(chan map[string]string, 16)
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				for msg := range cp.GetMsgChan() {
					if msg.GetSet().GetSetType() != entities.Data {
						continue
					}
					for _, rec := range msg.GetSet().GetRecords() {
						m := map[string]string{}
						for _, ie := range rec.GetOrderedElementList() {
							m[ie.GetName()] = goIPFIXValue(ie)
						}
						got <- m
					}
				}
			}()
			defer func() { cp.Stop(); <-drained }()

			e, stop := startExporter(t, Config{Address: cp.GetAddress().String(), Transport: TCP, FlushInterval: 20 * time.Millisecond}, nil)
			r := testRecord(42, tc.v6)
			tc.mutate(&r)
			want := wantIEs(&r)
			e.Export(&r)
			r = flow.Record{} // Export must have copied it
			select {
			case m := <-got:
				if diff := cmp.Diff(want, m); diff != "" {
					t.Errorf("IEs decoded by go-ipfix differ (-want +got):\n%s", diff)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("go-ipfix collector received no data record")
			}
			stop()
		})
	}
}

func TestEveryFieldRoundTripsThroughIPFIXCollect(t *testing.T) {
	for _, transport := range []Transport{TCP, UDP} {
		for _, tc := range recordCases {
			t.Run(string(transport)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				var got collected
				addr, _ := startCollector(t, ipfixcollect.Config{Network: string(transport), Address: "127.0.0.1:0"}, &got)
				e, _ := startExporter(t, Config{Address: addr, Transport: transport, FlushInterval: 20 * time.Millisecond}, nil)
				r := testRecord(7, tc.v6)
				tc.mutate(&r)
				want := wireView(r)
				e.Export(&r)
				waitFor(t, 5*time.Second, "the record", func() bool { return len(got.snapshot()) == 1 })
				if diff := cmp.Diff(want, got.snapshot()[0]); diff != "" {
					t.Errorf("record after the round trip differs (-want +got):\n%s", diff)
				}
				raw := got.raw[0]
				if f, ok := raw.Get("httpVals"); !ok || f.Str != r.L7.HTTPVals {
					t.Errorf("generic record httpVals = %v, %v; want %q", f, ok, r.L7.HTTPVals)
				}
			})
		}
	}
}

func TestExporterMetricsRegisterOnTheGivenRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Address: "127.0.0.1:1", Transport: TCP}, reg); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 0 {
		t.Errorf("dropped = %v before any export, want 0", v)
	}
	if _, err := New(Config{Address: "127.0.0.1:1", Transport: TCP}, reg); err == nil {
		t.Error("second exporter on the same registry: want a registration error")
	}
}

func TestIPFIXCollectDecodesGoIPFIXExporterOutput(t *testing.T) {
	var got collected
	addr, stop := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	recs := benchRecords()[:50]
	goIPFIXExport(t, addr, recs, len(recs))
	waitFor(t, 5*time.Second, "50 records", func() bool { return len(got.snapshot()) == len(recs) })
	stop()
	bySeq := map[uint64]flow.Record{}
	for _, r := range got.snapshot() {
		bySeq[r.Fwd.Packets] = r
	}
	for _, want := range recs {
		if diff := cmp.Diff(wireView(want), bySeq[want.Fwd.Packets]); diff != "" {
			t.Errorf("record %d from go-ipfix's exporter (-want +got):\n%s", want.Fwd.Packets, diff)
		}
	}
}
