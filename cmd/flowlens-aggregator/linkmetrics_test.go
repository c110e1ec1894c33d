package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// labelled sums the series of metric name whose labels include want.
func labelled(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// Two agents export both halves of connections from five client
// Deployments to one StatefulSet over IPFIX, with the workload IEs; the
// aggregator's rows carry both ends' workloads and L7 counts, and its
// flowlens_link_* counters count each connection once, the first three
// links under their own labels (metrics.links.maxSeries: 3), the rest
// under "other", counted as overflow.
func TestLinkMetricsAndWorkloadsThroughTheAggregator(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.Metrics.Links.MaxSeries = 3
	ra := startAggregator(t, cfg)
	addr := ra.addr(t, "tcp")
	nodeA := startAgent(t, addr, ipfixexport.TCP, 1)
	nodeB := startAgent(t, addr, ipfixexport.TCP, 2)
	const n = 50
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	for i := 0; i < n; i++ {
		src, dst := halves(i, start)
		src.Source.WorkloadKind, src.Source.WorkloadName = "Deployment", fmt.Sprintf("client-%d", i%5)
		src.L7.HTTPVals = fmt.Sprintf(`{"%d":{"http_method":"GET","status":200},"%d":{"http_method":"GET","status":503}}`, 2*i, 2*i+1)
		dst.Destination.WorkloadKind, dst.Destination.WorkloadName = "StatefulSet", "server"
		nodeA.export(t, src)
		nodeB.export(t, dst)
	}
	recs := ra.capture.waitFor(t, n, 20*time.Second)
	for _, r := range recs {
		if r.Source.WorkloadKind != "Deployment" || r.Destination.WorkloadName != "server" || r.Destination.WorkloadKind != "StatefulSet" {
			t.Errorf("row workloads %+v -> %+v", r.Source, r.Destination)
		}
		if r.L7Counts.HTTPRequests != 2 || r.L7Counts.HTTP5xx != 1 {
			t.Errorf("row L7 counts %+v, want 2 requests, 1 5xx", r.L7Counts)
		}
	}
	waitUntil(t, "link metrics", func() bool { return counterSum(t, ra.reg, "flowlens_link_connections_total") == n })
	// Each connection once: the source node's 1000 bytes, not both nodes'.
	if got := counterSum(t, ra.reg, "flowlens_link_bytes_total"); got != n*1000 {
		t.Errorf("link bytes %v, want %d", got, n*1000)
	}
	if got := counterSum(t, ra.reg, "flowlens_link_requests_total"); got != 2*n {
		t.Errorf("link requests %v, want %d", got, 2*n)
	}
	if got := counterSum(t, ra.reg, "flowlens_link_http_5xx_total"); got != n {
		t.Errorf("link 5xx %v, want %d", got, n)
	}
	other := labelled(t, ra.reg, "flowlens_link_connections_total", map[string]string{"source_name": "other", "destination_name": "other"})
	own := labelled(t, ra.reg, "flowlens_link_connections_total", map[string]string{
		"source_namespace": "ns-a", "source_kind": "Deployment", "destination_namespace": "ns-b",
		// The connections went through the Service ns-b/web: the link is
		// named by it, as the UI's map names the destination.
		"destination_kind": "Service", "destination_name": "web", "destination_port": "8080", "protocol": "tcp", "app_protocol": "http"})
	// Five links of ten connections each: three own, two in "other".
	if own != 30 || other != 20 {
		t.Errorf("connections: %v under own links, %v under other; want 30 and 20", own, other)
	}
	if got := counterSum(t, ra.reg, "flowlens_link_series_overflow_total"); got != 20 {
		t.Errorf("overflow %v rows, want 20", got)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metrics.links.enabled: false builds no link metrics.
func TestLinkMetricsCanBeTurnedOff(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.Metrics.Links.Enabled = false
	ra := newTestAggregator(t, cfg)
	defer ra.close()
	if ra.links != nil {
		t.Error("link metrics built although disabled")
	}
}
