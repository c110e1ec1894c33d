package linkmetrics

// Review R2 (issue 14): tests that expose defects. They FAIL on the code
// as reviewed; see the review report for the proposed fixes.

import (
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Pod, workload and Service names reach the aggregator as IPFIX strings
// (pkg/ipfixcollect/decode.go: v.Str = string(b), no UTF-8 check). A
// label value that is not valid UTF-8 makes client_golang's
// WithLabelValues panic, so one malformed record crashes the aggregator.
// Bad input must never panic.
func TestReviewR2InvalidUTF8LabelDoesNotPanic(t *testing.T) {
	l, err := New(Config{MaxSeries: 10}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &correlate.Record{}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1234, 80, flow.ProtoTCP)
	r.Source = flow.Endpoint{PodName: "web-1", PodNamespace: "shop", WorkloadKind: "Deployment", WorkloadName: "web\xff\xfe"}
	r.FwdDelta = flow.Counters{Bytes: 10, Packets: 1}
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("Observe panicked on a record with a non-UTF-8 workload name: %v", p)
		}
	}()
	l.Observe(r)
	if got := toFloat64(t, l.bytes); got != 10 {
		t.Errorf("bytes %v, want 10 (counted under a sanitized label)", got)
	}
}

// The map (pkg/servicemap Counters: flowEndReason != 2) counts a UDP
// connection that ended by idle timeout (every DNS flow ends that way,
// pkg/expirequeue) as a connection; the link metrics count only
// EndOfFlow, so flowlens_link_connections_total of a DNS link stays 0
// and the two views of the "same links" disagree.
func TestReviewR2IdleEndedConnectionCountedLikeTheMap(t *testing.T) {
	l, err := New(Config{MaxSeries: 10}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &correlate.Record{}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.10"), 5353, 53, flow.ProtoUDP)
	r.Source = flow.Endpoint{PodName: "debug", PodNamespace: "other"}
	r.EndReason = flow.EndIdleTimeout
	r.FwdDelta = flow.Counters{Bytes: 60, Packets: 1}
	l.Observe(r)
	if got := toFloat64(t, l.connections); got != 1 {
		t.Errorf("connections_total %v after an idle-timeout final row, want 1 (as the map counts it)", got)
	}
}

// The map names a destination reached through a Service by the Service
// (servicemap.DestinationNodeExpr: Service first); the link metrics name
// it by the backend's workload (workload first). The same connection is
// link web -> s:shop/api on the map and web -> StatefulSet api in
// Prometheus, so a Grafana node graph does not show the map's links.
func TestReviewR2ServiceDestinationLikeTheMap(t *testing.T) {
	in := half(false, flow.EndOfFlow, flow.Counters{Bytes: 1, Packets: 1}, flow.Counters{}, "")
	r := &correlate.Record{Record: in.Record}
	r.ServicePortName = "shop/api:http"
	k := KeyOf(r)
	if k.DestinationKind != KindService || k.DestinationNamespace != "shop" || k.DestinationName != "api" {
		t.Errorf("destination %s/%s/%s, want shop/Service/api as on the map", k.DestinationNamespace, k.DestinationKind, k.DestinationName)
	}
}

// Every distinct external address is a link of its own, and links are
// never forgotten: a pod that talks to MaxSeries different internet
// addresses (a crawler, a client of a CDN) uses up the cap for good, and
// from then on every NEW in-cluster link, e.g. a workload deployed later,
// is counted only under "other" until the aggregator restarts. The cap is
// bounded, but the links a node graph is for are the ones lost.
func TestReviewR2ExternalChurnDoesNotHideNewWorkloadLinks(t *testing.T) {
	const maxSeries = 50
	l, err := New(Config{MaxSeries: maxSeries}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := flow.Endpoint{PodName: "crawler-1", PodNamespace: "shop", WorkloadKind: "Deployment", WorkloadName: "crawler"}
	for i := 0; i < 2*maxSeries; i++ {
		r := &correlate.Record{}
		r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}), 40000, 443, flow.ProtoTCP)
		r.Source = src
		r.FwdDelta = flow.Counters{Bytes: 1, Packets: 1}
		l.Observe(r)
	}
	r := &correlate.Record{}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 40001, 8080, flow.ProtoTCP)
	r.Source = src
	r.Destination = flow.Endpoint{PodName: "api-0", PodNamespace: "shop", WorkloadKind: "StatefulSet", WorkloadName: "api"}
	r.FwdDelta = flow.Counters{Bytes: 1, Packets: 1}
	l.Observe(r)
	l.mu.Lock()
	_, tracked := l.links[KeyOf(r)]
	l.mu.Unlock()
	if !tracked {
		t.Errorf("the in-cluster link crawler -> api has no series: %d external addresses took all %d", 2*maxSeries, maxSeries)
	}
}
