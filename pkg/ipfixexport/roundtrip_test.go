package ipfixexport

import (
	"encoding/binary"
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
	"github.com/flowlens/flowlens/pkg/ipfixie"
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
	// From outside the cluster: kube-proxy masqueraded it to the node.
	{"IPv4 NodePort connection from outside, masqueraded", false, func(r *flow.Record) {
		r.ClusterIP, r.OrigDstIP, r.OrigDstPort = false, netip.MustParseAddr("172.18.0.3").As16(), 30080
		r.Tuple.SrcIP = netip.MustParseAddr("203.0.113.9").As16()
		r.ProxySnatIP, r.ProxySnatPort = netip.MustParseAddr("172.18.0.3").As16(), 61017
		r.FlowType, r.Source = flow.FlowTypeFromExternal, flow.Endpoint{}
		r.ClusterID = "7b0e3f62-3a8e-4c7d-9d2f-2f1c5e8a9b01"
	}},
	{"IPv6 LoadBalancer connection from outside, masqueraded", true, func(r *flow.Record) {
		r.ClusterIP, r.OrigDstIP, r.OrigDstPort = false, netip.MustParseAddr("2001:db8:1b::10").As16(), 443
		r.Tuple.SrcIP = netip.MustParseAddr("2001:db8:99::7").As16()
		r.ProxySnatIP, r.ProxySnatPort = netip.MustParseAddr("fd00:172:18::3").As16(), 1025
		r.FlowType, r.Source = flow.FlowTypeFromExternal, flow.Endpoint{}
		r.ClusterID = "prod-eu-1"
	}},
	{"IPv6 direct connection that ended", true, func(r *flow.Record) {
		r.ClusterIP, r.OrigDstIP, r.OrigDstPort = false, r.Tuple.DstIP, r.Tuple.DstPort
		r.EndReason, r.StopNanos, r.TCPState = flow.EndOfFlow, r.StartNanos+5e9, flow.TCPStateTimeWait
		r.L7, r.ServicePortName = flow.L7{}, ""
	}},
	// Within one second: only the milliseconds tell start from end.
	{"IPv4 sub-second connection that ended", false, func(r *flow.Record) {
		r.EndReason, r.StopNanos, r.TCPState = flow.EndOfFlow, r.StartNanos+3_400_000, flow.TCPStateTimeWait
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
	snat, snatPort := zero, uint64(0)
	if r.ProxySnatIP != [16]byte{} {
		snat, snatPort = netip.AddrFrom16(r.ProxySnatIP).Unmap(), uint64(r.ProxySnatPort)
	}
	return map[string]string{
		"flowStartSeconds":              u(uint64(r.StartNanos / 1e9)),
		"flowEndSeconds":                u(uint64(end / 1e9)),
		"flowStartMilliseconds":         u(uint64(r.StartNanos / 1e6)),
		"flowEndMilliseconds":           u(uint64(end / 1e6)),
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
		"sourcePodLabels":               r.Source.Labels,
		"destinationPodLabels":          r.Destination.Labels,
		"proxySnat" + fam:               snat.String(),
		"proxySnatPort":                 u(snatPort),
		"clusterId":                     r.ClusterID,
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
	case entities.Unsigned64, entities.DateTimeMilliseconds:
		return strconv.FormatUint(ie.GetUnsigned64Value(), 10)
	case entities.String:
		return ie.GetStringValue()
	case entities.Ipv4Address, entities.Ipv6Address:
		a, _ := netip.AddrFromSlice(ie.GetIPAddressValue())
		return a.Unmap().String()
	case entities.OctetArray:
		// How a Lenient go-ipfix collector keeps an IE its registry lacks.
		return string(ie.GetOctetArrayValue())
	}
	return fmt.Sprintf("unexpected type %d", ie.GetDataType())
}

// goIPFIXKey names a decoded IE: its name, or enterprise/id for the
// unknown ones a Lenient collector keeps without a name.
func goIPFIXKey(ie entities.InfoElementWithValue) string {
	if name := ie.GetName(); name != "" {
		return name
	}
	info := ie.GetInfoElement()
	return fmt.Sprintf("%d/%d", info.EnterpriseId, info.ElementId)
}

// startGoIPFIXCollector runs go-ipfix's collector in mode; data records
// arrive on the returned channel as IE key -> value.
func startGoIPFIXCollector(t *testing.T, mode collector.DecodingMode) (addr string, got <-chan map[string]string) {
	t.Helper()
	cp, err := collector.InitCollectingProcess(collector.CollectorInput{
		Address: "127.0.0.1:0", Protocol: "tcp", MaxBufferSize: 65535, DecodingMode: mode,
	})
	if err != nil {
		t.Fatal(err)
	}
	go cp.Start()
	waitFor(t, 5*time.Second, "go-ipfix collector address", func() bool { return cp.GetAddress() != nil })
	ch := make(chan map[string]string, 16)
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
					m[goIPFIXKey(ie)] = goIPFIXValue(ie)
				}
				select {
				case ch <- m:
				default: // a test that stopped reading must not block Stop
				}
			}
		}
	}()
	t.Cleanup(func() { cp.Stop(); <-drained })
	return cp.GetAddress().String(), ch
}

func TestEveryIEDecodesWithGoIPFIXCollector(t *testing.T) {
	registry.LoadRegistry()
	modes := []struct {
		name      string
		mode      collector.DecodingMode
		l7Details bool
		// keptDetails: the DNS/TLS IEs appear, unnamed, in decoded records.
		keptDetails bool
	}{
		{"Strict collector decodes the default templates", collector.DecodingModeStrict, false, false},
		{"LenientKeepUnknown collector keeps the L7 details as unknown IEs", collector.DecodingModeLenientKeepUnknown, true, true},
		{"LenientDropUnknown collector reads every Antrea IE around the L7 details", collector.DecodingModeLenientDropUnknown, true, false},
	}
	for _, md := range modes {
		for _, tc := range recordCases {
			t.Run(md.name+"/"+tc.name, func(t *testing.T) {
				addr, got := startGoIPFIXCollector(t, md.mode)
				e, stop := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond, L7DetailElements: md.l7Details}, nil)
				r := testRecord(42, tc.v6)
				setL7Details(&r) // sent only when the exporter is configured to
				tc.mutate(&r)
				want := wantIEs(&r)
				if md.keptDetails {
					for _, d := range ipfixie.L7Details() {
						want[fmt.Sprintf("%d/%d", ipfixie.EnterprisePlaceholder, d.ID)] = *d.Field(&r.L7)
					}
					for _, w := range ipfixie.WorkloadElements() {
						want[fmt.Sprintf("%d/%d", ipfixie.EnterprisePlaceholder, w.ID)] = *w.Field(&r)
					}
				}
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
}

// Why L7DetailElements defaults to off: a Strict go-ipfix collector (the
// library's default mode; Antrea's Flow Aggregator has been lenient since
// v2.3) rejects the templates and so loses every record, not only the
// details. A default exporter to the same
// collector, sending after the rejected record was written, shows the
// collector was decoding meanwhile.
func TestStrictGoIPFIXCollectorRejectsTemplatesWithL7Details(t *testing.T) {
	registry.LoadRegistry()
	addr, got := startGoIPFIXCollector(t, collector.DecodingModeStrict)
	reg := prometheus.NewRegistry()
	withDetails, _ := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond, L7DetailElements: true}, reg)
	r := testRecord(1, false)
	withDetails.Export(&r)
	waitFor(t, 5*time.Second, "the record with L7 details written", func() bool {
		return metricValue(t, reg, "flowlens_ipfix_exporter_records_sent_total") >= 1
	})
	plain, _ := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond}, nil)
	r = testRecord(2, false)
	plain.Export(&r)
	select {
	case m := <-got:
		if m["packetTotalCount"] != "2" {
			t.Fatalf("Strict collector decoded a record whose template has unknown IEs: %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Strict collector decoded nothing, not even the default exporter's record")
	}
	select {
	case m := <-got:
		t.Errorf("Strict collector decoded a second record: %v", m)
	case <-time.After(200 * time.Millisecond):
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
				checkMillisecondTimes(t, &raw, &r)
			})
		}
	}
}

func TestL7DetailsRoundTripThroughIPFIXCollectOnlyWhenEnabled(t *testing.T) {
	for _, l7Details := range []bool{true, false} {
		for _, transport := range []Transport{TCP, UDP} {
			for _, tc := range recordCases {
				name := fmt.Sprintf("L7DetailElements=%v/%s/%s", l7Details, transport, tc.name)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					var got collected
					addr, _ := startCollector(t, ipfixcollect.Config{Network: string(transport), Address: "127.0.0.1:0"}, &got)
					e, _ := startExporter(t, Config{Address: addr, Transport: transport, FlushInterval: 20 * time.Millisecond, L7DetailElements: l7Details}, nil)
					r := testRecord(7, tc.v6)
					setL7Details(&r)
					tc.mutate(&r)
					want := wireView(r)
					if !l7Details {
						want = withoutL7Details(want)
					}
					e.Export(&r)
					waitFor(t, 5*time.Second, "the record", func() bool { return len(got.snapshot()) == 1 })
					if diff := cmp.Diff(want, got.snapshot()[0]); diff != "" {
						t.Errorf("record after the round trip differs (-want +got):\n%s", diff)
					}
					raw := got.raw[0]
					checkMillisecondTimes(t, &raw, &r)
					for _, d := range ipfixie.L7Details() {
						f, ok := raw.Get(d.Name)
						switch {
						case ok != l7Details:
							t.Errorf("field %s present = %v, want %v", d.Name, ok, l7Details)
						case ok && (f.Str != *d.Field(&r.L7) || f.Enterprise != ipfixie.EnterprisePlaceholder || f.ID != d.ID):
							t.Errorf("field %s = %d/%d %q, want %d/%d %q", d.Name, f.Enterprise, f.ID, f.Str, ipfixie.EnterprisePlaceholder, d.ID, *d.Field(&r.L7))
						}
					}
					for _, w := range ipfixie.WorkloadElements() {
						f, ok := raw.Get(w.Name)
						switch {
						case ok != l7Details:
							t.Errorf("field %s present = %v, want %v", w.Name, ok, l7Details)
						case ok && (f.Str != *w.Field(&r) || f.ID != w.ID):
							t.Errorf("field %s = %d/%d %q, want %d/%d %q", w.Name, f.Enterprise, f.ID, f.Str, ipfixie.EnterprisePlaceholder, w.ID, *w.Field(&r))
						}
					}
					for _, f := range raw.Fields {
						if !l7Details && f.Enterprise == ipfixie.EnterprisePlaceholder {
							t.Errorf("default template carries enterprise-32473 IE %s", f.Name)
						}
					}
				})
			}
		}
	}
}

func TestDefaultTemplatesHaveNoEnterprise32473IE(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want int // enterprise-32473 field specifiers per template
	}{
		{"default", Config{Address: "127.0.0.1:1", Transport: TCP}, 0},
		{"L7DetailElements", Config{Address: "127.0.0.1:1", Transport: TCP, L7DetailElements: true}, len(ipfixie.L7Details()) + len(ipfixie.WorkloadElements())},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(tc.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(e.tmplMsg) != 2 {
				t.Fatalf("%d template messages, want 2", len(e.tmplMsg))
			}
			for _, set := range e.tmplMsg {
				// One template set with one record: set header, template
				// header, then field specifiers (RFC 7011 section 3.4.1).
				b := set[8:]
				n := 0
				for len(b) >= 4 {
					id := binary.BigEndian.Uint16(b)
					if id&0x8000 == 0 {
						b = b[4:]
						continue
					}
					if binary.BigEndian.Uint32(b[4:]) == ipfixie.EnterprisePlaceholder {
						n++
					}
					b = b[8:]
				}
				if n != tc.want {
					t.Errorf("template %d: %d enterprise-32473 IEs on the wire, want %d", binary.BigEndian.Uint16(set[4:]), n, tc.want)
				}
			}
		})
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

// checkMillisecondTimes asserts that raw carries r's start and end times
// truncated to the millisecond, and that a connection of at least 1 ms
// gets a start before its end even when both fall in the same second.
func checkMillisecondTimes(t *testing.T, raw *ipfixcollect.Record, r *flow.Record) {
	t.Helper()
	end := r.ExportNanos
	if r.StopNanos != 0 {
		end = r.StopNanos
	}
	start, ok1 := raw.Get("flowStartMilliseconds")
	stop, ok2 := raw.Get("flowEndMilliseconds")
	if !ok1 || !ok2 {
		t.Fatalf("flowStartMilliseconds present %v, flowEndMilliseconds present %v; want both", ok1, ok2)
	}
	if start.Type != ipfixie.DateTimeMilliseconds || start.Uint != uint64(r.StartNanos/1e6) {
		t.Errorf("flowStartMilliseconds = %d (type %v), want %d", start.Uint, start.Type, r.StartNanos/1e6)
	}
	if stop.Type != ipfixie.DateTimeMilliseconds || stop.Uint != uint64(end/1e6) {
		t.Errorf("flowEndMilliseconds = %d (type %v), want %d", stop.Uint, stop.Type, end/1e6)
	}
	if end-r.StartNanos >= 1e6 && start.Uint >= stop.Uint {
		t.Errorf("connection of %v: flowStartMilliseconds %d not before flowEndMilliseconds %d", time.Duration(end-r.StartNanos), start.Uint, stop.Uint)
	}
}
