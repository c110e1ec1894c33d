package linkmetrics

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

var t0 = time.Unix(1_700_000_000, 0)

// half is one node's record of a web -> api connection through the api
// Service; the source node knows the client, the destination node the
// server, each with its workload.
func half(source bool, reason flow.EndReason, fwd, rev flow.Counters, httpVals string) correlate.Input {
	r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: reason}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.244.2.7"), 40000, 8080, flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	r.StartNanos = t0.UnixNano()
	r.ExportNanos = t0.Add(time.Second).UnixNano()
	r.Fwd, r.Rev = fwd, rev
	r.FwdDelta, r.RevDelta = fwd, rev
	r.L7 = flow.L7{AppProtocolName: "http", HTTPVals: httpVals}
	if source {
		r.Source = flow.Endpoint{PodName: "web-5d8f-x", PodNamespace: "shop", NodeName: "node-a", WorkloadKind: "Deployment", WorkloadName: "web"}
		r.OrigDstIP, r.OrigDstPort = netip.MustParseAddr("10.96.0.20").As16(), 80
		r.ServicePortName, r.ClusterIP = "shop/api:http", true
		return correlate.Input{Record: r, Exporter: "node-a"}
	}
	r.Destination = flow.Endpoint{PodName: "api-0", PodNamespace: "shop", NodeName: "node-b", WorkloadKind: "StatefulSet", WorkloadName: "api"}
	return correlate.Input{Record: r, Exporter: "node-b"}
}

// toFloat64 reads a counter or gauge with exactly one series.
func toFloat64(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// collectCount is the number of series c has.
func collectCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 1024)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

func value(t *testing.T, vec *prometheus.CounterVec, k Key) float64 {
	t.Helper()
	return toFloat64(t, vec.WithLabelValues(k.labelValues()...))
}

// Both halves of an inter-node connection, reported twice (an active
// timeout record, then end of flow), go through the real correlator; the
// link counts each byte once (the source node's deltas), one connection,
// and each HTTP transaction once even though both nodes logged it.
func TestCorrelatedConnectionIsCountedOnce(t *testing.T) {
	l, err := New(Config{}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c, err := correlate.New(correlate.Config{CorrelationWait: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rows int
	emit := func(r *correlate.Record) { rows++; l.Observe(r) }
	tx1 := `{"1":{"status":200},"2":{"status":503}}`
	inputs := []correlate.Input{
		half(true, flow.EndActiveTimeout, flow.Counters{Packets: 10, Bytes: 1000}, flow.Counters{Packets: 8, Bytes: 8000}, tx1),
		half(false, flow.EndActiveTimeout, flow.Counters{Packets: 9, Bytes: 900}, flow.Counters{Packets: 8, Bytes: 8000}, tx1),
	}
	for i := range inputs {
		c.Add(&inputs[i], t0.Add(time.Duration(i)*time.Second), emit)
	}
	c.Flush(emit) // the aggregator's active timeout
	tx2 := `{"3":{"status":404}}`
	end := []correlate.Input{
		half(true, flow.EndOfFlow, flow.Counters{Packets: 5, Bytes: 500}, flow.Counters{Packets: 4, Bytes: 400}, tx2),
		half(false, flow.EndOfFlow, flow.Counters{Packets: 5, Bytes: 500}, flow.Counters{Packets: 4, Bytes: 400}, tx2),
	}
	// An agent's totals are cumulative: the end-of-flow records' totals
	// include the first export's counters (their deltas are the rest).
	end[0].Record.Fwd, end[0].Record.Rev = flow.Counters{Packets: 15, Bytes: 1500}, flow.Counters{Packets: 12, Bytes: 8400}
	end[1].Record.Fwd, end[1].Record.Rev = flow.Counters{Packets: 14, Bytes: 1400}, flow.Counters{Packets: 12, Bytes: 8400}
	for i := range end {
		now := t0.Add(time.Duration(10+i) * time.Second)
		c.Add(&end[i], now, emit)
		c.Expire(now, emit)
	}
	c.Flush(emit)
	if rows < 2 {
		t.Fatalf("%d rows from the correlator, want at least 2", rows)
	}
	// Named as the map names it: the Service the connection went through.
	k := Key{SourceNamespace: "shop", SourceKind: "Deployment", SourceName: "web",
		DestinationNamespace: "shop", DestinationKind: KindService, DestinationName: "api",
		DestinationPort: 8080, Protocol: flow.ProtoTCP, AppProtocol: "http"}
	for _, tc := range []struct {
		name string
		vec  *prometheus.CounterVec
		want float64
	}{
		{"bytes", l.bytes, 1500}, {"reverse bytes", l.reverseBytes, 8400},
		{"packets", l.packets, 15}, {"reverse packets", l.reversePackets, 12},
		{"connections", l.connections, 1}, {"requests", l.requests, 3},
		{"http4xx", l.http4xx, 1}, {"http5xx", l.http5xx, 1}, {"dnsErrors", l.dnsErrors, 0},
	} {
		if got := value(t, tc.vec, k); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
	if n := collectCount(l.bytes); n != 1 {
		t.Errorf("%d bytes series, want 1 (one link)", n)
	}
}

func row(src, dst string, port uint16, bytes uint64) *correlate.Record {
	r := &correlate.Record{}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1000, port, flow.ProtoUDP)
	r.Source = flow.Endpoint{PodName: src, PodNamespace: "ns"}
	r.Destination = flow.Endpoint{PodName: dst, PodNamespace: "ns"}
	r.FwdDelta.Bytes = bytes
	r.EndReason = flow.EndOfFlow
	return r
}

// Beyond MaxSeries links, rows of new links go to the "other" link and are
// counted in the overflow counter; links that already have series keep
// them, and nothing is lost from the totals.
func TestCapSendsNewLinksToOtherAndCountsThem(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, err := New(Config{MaxSeries: 2}, reg)
	if err != nil {
		t.Fatal(err)
	}
	l.Observe(row("a", "b", 53, 1))
	l.Observe(row("a", "c", 53, 2))
	l.Observe(row("a", "d", 53, 4))  // third link: other
	l.Observe(row("a", "e", 53, 8))  // fourth: other
	l.Observe(row("a", "b", 53, 16)) // known link: its own series
	l.Observe(row("a", "d", 53, 32)) // still other
	if got := toFloat64(t, l.overflow); got != 3 {
		t.Errorf("overflow = %v rows, want 3", got)
	}
	if got := toFloat64(t, l.tracked); got != 2 {
		t.Errorf("flowlens_link_series = %v, want 2", got)
	}
	other := make([]string, len(labelNames))
	for i := range other {
		other[i] = Other
	}
	if got := toFloat64(t, l.bytes.WithLabelValues(other...)); got != 4+8+32 {
		t.Errorf("other bytes = %v, want 44", got)
	}
	if got := toFloat64(t, l.connections.WithLabelValues(other...)); got != 3 {
		t.Errorf("other connections = %v, want 3", got)
	}
	b := KeyOf(row("a", "b", 53, 0))
	if got := value(t, l.bytes, b); got != 17 {
		t.Errorf("a->b bytes = %v, want 17", got)
	}
	// Two links and "other": three series of each counter, no more.
	if n := collectCount(l.bytes); n != 3 {
		t.Errorf("%d bytes series, want 3", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"flowlens_link_bytes_total", "flowlens_link_series_overflow_total", "flowlens_link_requests_total", "flowlens_link_dns_errors_total"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("registry lacks %s (has %v)", want, names)
		}
	}
}

func TestKeyNamesEachEnd(t *testing.T) {
	base := func() *correlate.Record {
		r := &correlate.Record{}
		r.Tuple = flow.NewTuple(netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("198.51.100.7"), 1000, 443, flow.ProtoTCP)
		r.L7.AppProtocolName = "tls"
		return r
	}
	tests := []struct {
		name                  string
		mod                   func(*correlate.Record)
		srcNS, srcKind, src   string
		dstNS, dstKind, dstNm string
	}{
		{"both external", func(*correlate.Record) {}, "", KindExternal, "203.0.113.5", "", KindExternal, "198.51.100.7"},
		{"workloads", func(r *correlate.Record) {
			r.Source = flow.Endpoint{PodName: "p", PodNamespace: "a", WorkloadKind: "DaemonSet", WorkloadName: "ds"}
			r.Destination = flow.Endpoint{PodName: "q", PodNamespace: "b", WorkloadKind: "CronJob", WorkloadName: "cj"}
		}, "a", "DaemonSet", "ds", "b", "CronJob", "cj"},
		{"workload behind a Service: the Service, as on the map", func(r *correlate.Record) {
			r.Source = flow.Endpoint{PodName: "p", PodNamespace: "a", WorkloadKind: "DaemonSet", WorkloadName: "ds"}
			r.Destination = flow.Endpoint{PodName: "q", PodNamespace: "b", WorkloadKind: "CronJob", WorkloadName: "cj"}
			r.ServicePortName = "b/svc:https"
		}, "a", "DaemonSet", "ds", "b", KindService, "svc"},
		{"external by TLS server name", func(r *correlate.Record) {
			r.L7.TLSServerName = "api.example.com"
		}, "", KindExternal, "203.0.113.5", "", KindExternal, "api.example.com"},
		{"external: an overlong server name falls back to the address", func(r *correlate.Record) {
			r.L7.TLSServerName = strings.Repeat("a", 300)
		}, "", KindExternal, "203.0.113.5", "", KindExternal, "198.51.100.7"},
		{"bare pod behind a Service: the Service", func(r *correlate.Record) {
			r.Source = flow.Endpoint{PodName: "debug", PodNamespace: "a"}
			r.Destination = flow.Endpoint{PodName: "q", PodNamespace: "b"}
			r.ServicePortName = "b/svc:https"
		}, "a", KindPod, "debug", "b", KindService, "svc"},
		{"unmatched half: Service known, destination pod not", func(r *correlate.Record) {
			r.ServicePortName = "b/svc:"
		}, "", KindExternal, "203.0.113.5", "b", KindService, "svc"},
		{"node", func(r *correlate.Record) {
			r.Source = flow.Endpoint{NodeName: "node-a"}
			r.Destination = flow.Endpoint{PodName: "q", PodNamespace: "b"}
		}, "", KindNode, "node-a", "b", KindPod, "q"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base()
			tt.mod(r)
			k := KeyOf(r)
			want := Key{SourceNamespace: tt.srcNS, SourceKind: tt.srcKind, SourceName: tt.src,
				DestinationNamespace: tt.dstNS, DestinationKind: tt.dstKind, DestinationName: tt.dstNm,
				DestinationPort: 443, Protocol: flow.ProtoTCP, AppProtocol: "tls"}
			if k != want {
				t.Errorf("KeyOf = %+v\nwant  %+v", k, want)
			}
		})
	}
}

func TestNewValidatesMaxSeriesAndRegisters(t *testing.T) {
	for _, n := range []int{-1, MaxMaxSeries + 1} {
		if _, err := New(Config{MaxSeries: n}, nil); err == nil || !strings.Contains(err.Error(), "MaxSeries") {
			t.Errorf("MaxSeries %d: err = %v, want one naming MaxSeries", n, err)
		}
	}
	l, err := New(Config{}, nil) // nil registry: counted, not registered
	if err != nil || l.max != DefaultMaxSeries {
		t.Fatalf("New default = %v, %v", l, err)
	}
	l.Observe(row("a", "b", 1, 1))
	reg := prometheus.NewRegistry()
	if _, err := New(Config{}, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}, reg); err == nil {
		t.Error("second New on the same registry: want a registration error")
	}
}

// A connection paused past the idle timeout is exported (idle timeout),
// resumes and ends: three rows, one connection, counted at the first row
// (deltas equal to the totals); the later rows carry less than the totals.
func TestPausedConnectionCountsOnce(t *testing.T) {
	l, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(reason flow.EndReason, delta, total uint64) *correlate.Record {
		r := row("web", "db", 5432, delta)
		r.EndReason = reason
		r.FwdDelta = flow.Counters{Packets: delta, Bytes: delta}
		r.Fwd = flow.Counters{Packets: total, Bytes: total}
		return r
	}
	l.Observe(rec(flow.EndIdleTimeout, 10, 10))
	l.Observe(rec(flow.EndActiveTimeout, 5, 15))
	l.Observe(rec(flow.EndOfFlow, 5, 20))
	if got := toFloat64(t, l.connections); got != 1 {
		t.Errorf("connections %v, want 1", got)
	}
	if got := toFloat64(t, l.bytes); got != 20 {
		t.Errorf("bytes %v, want 20", got)
	}
}

// At the cap, a link idle for IdleTimeout loses its series to a new link;
// a link seen within it keeps its own.
func TestIdleLinksMakeRoomAtTheCap(t *testing.T) {
	now := t0
	l, err := New(Config{MaxSeries: 2, IdleTimeout: time.Minute, Now: func() time.Time { return now }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Observe(row("a", "b", 53, 1))
	l.Observe(row("a", "c", 53, 1))
	now = now.Add(50 * time.Second)
	l.Observe(row("a", "c", 53, 1))
	l.Observe(row("a", "d", 53, 1)) // cap reached, nothing idle yet: other
	if got := toFloat64(t, l.overflow); got != 1 {
		t.Fatalf("overflow %v, want 1", got)
	}
	now = now.Add(20 * time.Second) // a->b idle 70s, a->c 20s
	l.Observe(row("a", "e", 53, 4))
	l.mu.Lock()
	_, hasB := l.links[KeyOf(row("a", "b", 53, 0))]
	_, hasC := l.links[KeyOf(row("a", "c", 53, 0))]
	_, hasE := l.links[KeyOf(row("a", "e", 53, 0))]
	l.mu.Unlock()
	if hasB || !hasC || !hasE {
		t.Errorf("links after eviction: a->b %v (want false), a->c %v, a->e %v (want true)", hasB, hasC, hasE)
	}
	if got := toFloat64(t, l.evicted); got != 1 {
		t.Errorf("evicted %v, want 1", got)
	}
	if got := value(t, l.bytes, KeyOf(row("a", "e", 53, 0))); got != 4 {
		t.Errorf("a->e bytes %v, want 4", got)
	}
	// Deleted, not left behind: a->c, a->e and other.
	if n := collectCount(l.bytes); n != 3 {
		t.Errorf("%d bytes series, want 3", n)
	}
}

// Beyond a quarter of the cap, a new external peer's link is named
// <source> -> External/other: its bytes stay on its in-cluster end.
func TestExternalEndsCollapseBeyondTheirShare(t *testing.T) {
	l, err := New(Config{MaxSeries: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r := &correlate.Record{}
		r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 40000, 443, flow.ProtoTCP)
		r.Source = flow.Endpoint{PodName: "c-1", PodNamespace: "shop", WorkloadKind: "Deployment", WorkloadName: "crawler"}
		r.FwdDelta = flow.Counters{Bytes: 1, Packets: 1}
		l.Observe(r)
	}
	k := Key{SourceNamespace: "shop", SourceKind: "Deployment", SourceName: "crawler", DestinationKind: KindExternal,
		DestinationName: Other, DestinationPort: 443, Protocol: flow.ProtoTCP}
	if got := value(t, l.bytes, k); got != 3 {
		t.Errorf("crawler -> External/other bytes %v, want 3 (5 peers, 2 with series of their own)", got)
	}
	if got := toFloat64(t, l.overflow); got != 0 {
		t.Errorf("overflow %v, want 0", got)
	}
}
