package ipfixexport

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vmware/go-ipfix/pkg/entities"
	"github.com/vmware/go-ipfix/pkg/exporter"
	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

const benchRecordsPerOp = 200_000

// discardingCollector accepts TCP connections and throws the bytes away.
func discardingCollector(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func benchRecords() []flow.Record {
	recs := make([]flow.Record, 1024)
	for i := range recs {
		recs[i] = testRecord(uint64(i), i%4 == 0)
		recs[i].L7 = flow.L7{} // L7 is opt-in and rare; measure the common record
	}
	return recs
}

type allocStats struct {
	elapsed         time.Duration
	mallocs, mbytes uint64
}

func measure(f func()) allocStats {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	f()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	return allocStats{elapsed, after.Mallocs - before.Mallocs, after.TotalAlloc - before.TotalAlloc}
}

// BenchmarkExportTCP measures records/s from Export to a loopback TCP
// collector on one core (GOMAXPROCS=1: producer, encoder and the reading
// collector share it), with go-ipfix's buffered exporter over the same
// records and IEs as the baseline.
func BenchmarkExportTCP(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	addr := discardingCollector(b)
	recs := benchRecords()

	reg := prometheus.NewRegistry()
	e, err := New(Config{Address: addr, Transport: TCP, BufferRecords: 1 << 16}, reg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for metricGauge(b, reg, "flowlens_ipfix_exporter_connected") != 1 {
		time.Sleep(time.Millisecond)
	}

	sent := 0
	b.ReportAllocs()
	b.ResetTimer()
	ours := measure(func() {
		for range b.N {
			for i := range benchRecordsPerOp {
				// A full buffer refuses a record while the collector
				// drains it; the agent's loop offers a refused record
				// again on its next tick (its store keeps it), which
				// is what this producer does, sooner.
				for !e.Export(&recs[i&1023]) {
					runtime.Gosched() // let the sender run
				}
			}
			sent += benchRecordsPerOp
			e.Flush()
			for counterValue(e.m.recordsSent) < float64(sent) {
				e.Flush()
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
	b.StopTimer()
	if d := metricValueB(b, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); d != 0 {
		// A connected collector that keeps reading is never a reason to
		// drop: the records are refused until it took the earlier ones.
		b.Fatalf("%v records dropped with the collector connected and reading", d)
	}
	b.ReportMetric(metricValueB(b, reg, "flowlens_ipfix_exporter_records_refused_total"), "refused")
	n := float64(b.N * benchRecordsPerOp)
	b.ReportMetric(n/ours.elapsed.Seconds(), "rec/s")
	b.ReportMetric(float64(ours.mallocs)/n, "allocs/rec")
	b.ReportMetric(float64(ours.mbytes)/n, "B/rec")

	base := measure(func() { goIPFIXExport(b, addr, recs, benchRecordsPerOp) })
	b.ReportMetric(benchRecordsPerOp/base.elapsed.Seconds(), "goipfix-rec/s")
	b.ReportMetric(float64(base.mallocs)/benchRecordsPerOp, "goipfix-allocs/rec")
	b.ReportMetric(float64(base.mbytes)/benchRecordsPerOp, "goipfix-B/rec")
}

func metricGauge(b *testing.B, reg *prometheus.Registry, name string) float64 {
	return metricValueB(b, reg, name)
}

// counterValue reads a counter without gathering the whole registry, which
// would allocate inside the measurement.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func metricValueB(b *testing.B, reg *prometheus.Registry, name string, labels ...string) float64 {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				match = match && found
			}
			if !match {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// goIPFIXExport sends n records through go-ipfix's BufferedIPFIXExporter,
// reusing one element list per template and setting values per record,
// which is the cheapest way that API allows.
func goIPFIXExport(b testing.TB, addr string, recs []flow.Record, n int) {
	b.Helper()
	registry.LoadRegistry()
	ep, err := exporter.InitExportingProcess(exporter.ExporterInput{
		CollectorAddress: addr, CollectorProtocol: "tcp", ObservationDomainID: 1,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ep.CloseConnToCollector()
	be := exporter.NewBufferedIPFIXExporter(ep)
	type tmpl struct {
		id      uint16
		elems   []entities.InfoElementWithValue
		setters []func(entities.InfoElementWithValue, *flow.Record)
	}
	var tmpls [2]tmpl
	for fam, id := range []uint16{TemplateIDv4, TemplateIDv6} {
		t := tmpl{id: id}
		for _, fie := range ipfixie.FlowIEs {
			if (fam == 0 && fie.Family == ipfixie.IPv6Only) || (fam == 1 && fie.Family == ipfixie.IPv4Only) {
				continue
			}
			ie, err := registry.GetInfoElement(fie.Name, fie.Enterprise)
			if err != nil {
				b.Fatal(err)
			}
			el, err := entities.DecodeAndCreateInfoElementWithValue(ie, nil)
			if err != nil {
				b.Fatal(err)
			}
			t.elems = append(t.elems, el)
			t.setters = append(t.setters, goIPFIXSetter(b, fie.Name))
		}
		tr := entities.NewTemplateRecordFromElements(id, t.elems)
		if err := tr.PrepareRecord(); err != nil {
			b.Fatal(err)
		}
		if err := be.AddRecord(tr); err != nil {
			b.Fatal(err)
		}
		tmpls[fam] = t
	}
	for i := range n {
		r := &recs[i&1023]
		t := &tmpls[0]
		if !r.Tuple.IsIPv4() {
			t = &tmpls[1]
		}
		for j, set := range t.setters {
			set(t.elems[j], r)
		}
		if err := be.AddRecord(entities.NewDataRecordFromElements(t.id, t.elems)); err != nil {
			b.Fatal(err)
		}
	}
	if err := be.Flush(); err != nil {
		b.Fatal(err)
	}
}

func goIPFIXSetter(b testing.TB, name string) func(entities.InfoElementWithValue, *flow.Record) {
	type ie = entities.InfoElementWithValue
	u64 := func(f func(*flow.Record) uint64) func(ie, *flow.Record) {
		return func(e ie, r *flow.Record) { e.SetUnsigned64Value(f(r)) }
	}
	str := func(f func(*flow.Record) string) func(ie, *flow.Record) {
		return func(e ie, r *flow.Record) { e.SetStringValue(f(r)) }
	}
	ip := func(f func(*flow.Record) []byte) func(ie, *flow.Record) {
		return func(e ie, r *flow.Record) { e.SetIPAddressValue(net.IP(f(r))) }
	}
	s := map[string]func(ie, *flow.Record){
		"flowStartSeconds":           func(e ie, r *flow.Record) { e.SetUnsigned32Value(uint32(r.StartNanos / 1e9)) },
		"flowEndSeconds":             func(e ie, r *flow.Record) { e.SetUnsigned32Value(uint32(r.ExportNanos / 1e9)) },
		"flowStartMilliseconds":      u64(func(r *flow.Record) uint64 { return uint64(r.StartNanos / 1e6) }),
		"flowEndMilliseconds":        u64(func(r *flow.Record) uint64 { return uint64(r.ExportNanos / 1e6) }),
		"flowEndReason":              func(e ie, r *flow.Record) { e.SetUnsigned8Value(uint8(r.EndReason)) },
		"sourceIPv4Address":          ip(func(r *flow.Record) []byte { return r.Tuple.SrcIP[12:] }),
		"destinationIPv4Address":     ip(func(r *flow.Record) []byte { return r.Tuple.DstIP[12:] }),
		"sourceIPv6Address":          ip(func(r *flow.Record) []byte { return r.Tuple.SrcIP[:] }),
		"destinationIPv6Address":     ip(func(r *flow.Record) []byte { return r.Tuple.DstIP[:] }),
		"sourceTransportPort":        func(e ie, r *flow.Record) { e.SetUnsigned16Value(r.Tuple.SrcPort) },
		"destinationTransportPort":   func(e ie, r *flow.Record) { e.SetUnsigned16Value(r.Tuple.DstPort) },
		"protocolIdentifier":         func(e ie, r *flow.Record) { e.SetUnsigned8Value(r.Tuple.Proto) },
		"packetTotalCount":           u64(func(r *flow.Record) uint64 { return r.Fwd.Packets }),
		"octetTotalCount":            u64(func(r *flow.Record) uint64 { return r.Fwd.Bytes }),
		"packetDeltaCount":           u64(func(r *flow.Record) uint64 { return r.FwdDelta.Packets }),
		"octetDeltaCount":            u64(func(r *flow.Record) uint64 { return r.FwdDelta.Bytes }),
		"reversePacketTotalCount":    u64(func(r *flow.Record) uint64 { return r.Rev.Packets }),
		"reverseOctetTotalCount":     u64(func(r *flow.Record) uint64 { return r.Rev.Bytes }),
		"reversePacketDeltaCount":    u64(func(r *flow.Record) uint64 { return r.RevDelta.Packets }),
		"reverseOctetDeltaCount":     u64(func(r *flow.Record) uint64 { return r.RevDelta.Bytes }),
		"sourcePodName":              str(func(r *flow.Record) string { return r.Source.PodName }),
		"sourcePodNamespace":         str(func(r *flow.Record) string { return r.Source.PodNamespace }),
		"sourceNodeName":             str(func(r *flow.Record) string { return r.Source.NodeName }),
		"destinationPodName":         str(func(r *flow.Record) string { return r.Destination.PodName }),
		"destinationPodNamespace":    str(func(r *flow.Record) string { return r.Destination.PodNamespace }),
		"destinationNodeName":        str(func(r *flow.Record) string { return r.Destination.NodeName }),
		"destinationClusterIPv4":     ip(func(r *flow.Record) []byte { return r.OrigDstIP[12:] }),
		"destinationClusterIPv6":     ip(func(r *flow.Record) []byte { return r.OrigDstIP[:] }),
		"destinationServicePort":     func(e ie, r *flow.Record) { e.SetUnsigned16Value(r.OrigDstPort) },
		"destinationServicePortName": str(func(r *flow.Record) string { return r.ServicePortName }),
		"destinationServiceIPv4":     ip(func(r *flow.Record) []byte { return r.OrigDstIP[12:] }),
		"destinationServiceIPv6":     ip(func(r *flow.Record) []byte { return r.OrigDstIP[:] }),
		"tcpState":                   str(func(r *flow.Record) string { return r.TCPState.String() }),
		"flowType":                   func(e ie, r *flow.Record) { e.SetUnsigned8Value(uint8(r.FlowType)) },
		"appProtocolName":            str(func(r *flow.Record) string { return r.L7.AppProtocolName }),
		"httpVals":                   str(func(r *flow.Record) string { return r.L7.HTTPVals }),
		"sourcePodLabels":            str(func(r *flow.Record) string { return r.Source.Labels }),
		"destinationPodLabels":       str(func(r *flow.Record) string { return r.Destination.Labels }),
		"proxySnatIPv4":              ip(func(r *flow.Record) []byte { return r.ProxySnatIP[12:] }),
		"proxySnatIPv6":              ip(func(r *flow.Record) []byte { return r.ProxySnatIP[:] }),
		"proxySnatPort":              func(e ie, r *flow.Record) { e.SetUnsigned16Value(r.ProxySnatPort) },
		"clusterId":                  str(func(r *flow.Record) string { return r.ClusterID }),
	}[name]
	if s == nil {
		b.Fatalf("no go-ipfix setter for %s", name)
	}
	return s
}
