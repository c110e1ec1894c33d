package ipfixexport

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// testRecord returns a record with every exported field set; seq is
// carried in packetTotalCount so tests can spot loss and duplicates.
func testRecord(seq uint64, v6 bool) flow.Record {
	src, dst, vip := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.244.2.7"), netip.MustParseAddr("10.96.0.10")
	if v6 {
		src, dst, vip = netip.MustParseAddr("fd00:10:244:1::5"), netip.MustParseAddr("fd00:10:244:2::7"), netip.MustParseAddr("fd00:10:96::a")
	}
	// Sub-second parts, so that a time sent in whole seconds shows.
	start := int64(1_763_700_000)*1e9 + 123_456_789
	return flow.Record{
		Conn: flow.Conn{
			Tuple:       flow.NewTuple(src, dst, uint16(30000+seq%30000), 8080, flow.ProtoTCP),
			OrigDstIP:   vip.As16(),
			OrigDstPort: 80,
			TCPState:    flow.TCPStateEstablished,
			StartNanos:  start,
			Fwd:         flow.Counters{Packets: seq, Bytes: 1000 + seq},
			Rev:         flow.Counters{Packets: 7, Bytes: 9000},
		},
		FwdDelta:        flow.Counters{Packets: 3, Bytes: 300},
		RevDelta:        flow.Counters{Packets: 2, Bytes: 2000},
		EndReason:       flow.EndActiveTimeout,
		ExportNanos:     start + 61e9 + 654_321_000,
		FlowType:        flow.FlowTypeInterNode,
		Source:          flow.Endpoint{PodName: "client-7d9f", PodNamespace: "default", NodeName: "node-a", Labels: `{"app":"client"}`},
		Destination:     flow.Endpoint{PodName: "web-0", PodNamespace: "shop", NodeName: "node-b", Labels: `{"app":"web","tier":"front"}`},
		ServicePortName: "shop/web:http",
		ClusterIP:       true,
		L7:              flow.L7{AppProtocolName: "http", HTTPVals: `{"0":{"hostname":"web","url":"/","http_user_agent":"curl","http_content_type":"text/html","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":612}}`},
	}
}

// setL7Details fills every DNS/TLS detail of r with a distinct value.
func setL7Details(r *flow.Record) {
	r.L7.DNSQueryName = "web.shop.svc.cluster.local"
	r.L7.DNSQueryType = "AAAA"
	r.L7.DNSResponseCode = "NOERROR"
	r.L7.DNSAnswers = "fd00:10:96::a,fd00:10:96::b"
	r.L7.TLSServerName = "api.example.org"
	r.L7.TLSVersion = "TLS 1.3"
	r.L7.TLSJA3 = "e7d705a3286e19ea42f587b344ee6865"
	r.L7.TLSJA3S = "15af977ce25de452b96affa2addb1036"
	r.L7.TLSJA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
	// The workload IEs go with the same option.
	r.Source.WorkloadKind, r.Source.WorkloadName = "Deployment", "frontend"
	r.Destination.WorkloadKind, r.Destination.WorkloadName = "StatefulSet", "web"
}

// withoutL7Details is r as a receiver sees it from an exporter that does
// not send the details.
func withoutL7Details(r flow.Record) flow.Record {
	r.L7 = flow.L7{AppProtocolName: r.L7.AppProtocolName, HTTPVals: r.L7.HTTPVals}
	r.Source.WorkloadKind, r.Source.WorkloadName = "", ""
	r.Destination.WorkloadKind, r.Destination.WorkloadName = "", ""
	return r
}

// collected gathers what an ipfixcollect collector receives.
type collected struct {
	mu   sync.Mutex
	recs []flow.Record
	raw  []ipfixcollect.Record
}

func (c *collected) add(r ipfixcollect.Record) {
	fr, err := r.FlowRecord()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.raw = append(c.raw, r.Clone())
	if err == nil {
		c.recs = append(c.recs, fr)
	}
}

func (c *collected) snapshot() []flow.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]flow.Record(nil), c.recs...)
}

// waitFor polls until cond holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startCollector runs an ipfixcollect collector until the returned stop is
// called (or the test ends).
func startCollector(t *testing.T, cfg ipfixcollect.Config, into *collected) (addr string, stop func()) {
	t.Helper()
	return startCollectorWithMetrics(t, cfg, into, prometheus.NewRegistry())
}

// startCollectorWithMetrics is startCollector registering the collector's
// metrics on reg.
func startCollectorWithMetrics(t *testing.T, cfg ipfixcollect.Config, into *collected, reg prometheus.Registerer) (addr string, stop func()) {
	t.Helper()
	col, err := ipfixcollect.New(cfg, reg)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- col.Run(ctx, into.add) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("collector Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return col.Addr().String(), stop
}

// startExporter runs an exporter until the returned stop is called (or the
// test ends).
func startExporter(t *testing.T, cfg Config, reg prometheus.Registerer) (*Exporter, func()) {
	t.Helper()
	e, err := New(cfg, reg)
	if err != nil {
		t.Fatalf("exporter: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("exporter Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

// metricValue reads one sample from reg; labels are name=value pairs.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

// wireView is what survives the wire: times truncated to the millisecond
// (flowStart/EndMilliseconds), end time as ExportNanos (and StopNanos for
// ended flows), OrigDst only for DNAT.
func wireView(r flow.Record) flow.Record {
	end := r.StopNanos
	if end == 0 {
		end = r.ExportNanos
	}
	out := r
	out.StartNanos = r.StartNanos / 1e6 * 1e6
	out.ExportNanos = end / 1e6 * 1e6
	out.StopNanos = 0
	if r.EndReason == flow.EndOfFlow {
		out.StopNanos = out.ExportNanos
	}
	out.ID, out.Zone, out.Mark, out.Status = 0, 0, 0, 0
	return out
}

func seqsOf(recs []flow.Record) map[uint64]int {
	m := map[uint64]int{}
	for _, r := range recs {
		m[r.Fwd.Packets]++
	}
	return m
}

func describeSeqs(m map[uint64]int, n uint64) string {
	var missing, dup int
	first := uint64(0)
	for i := uint64(0); i < n; i++ {
		switch m[i] {
		case 0:
			if missing == 0 {
				first = i
			}
			missing++
		case 1:
		default:
			dup++
		}
	}
	return fmt.Sprintf("%d missing (first %d), %d duplicated, of %d", missing, first, dup, n)
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
