package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
)

// The configured clusterID reaches every record, and a connection's proxy
// SNAT address (from its NEW event, which has no counters) reaches every
// record of it: through the loop, the store and the queue to the sink.
func TestRecordsCarryClusterIDAndProxySnat(t *testing.T) {
	src := newFakeSource()
	ident := &clusterIdentity{id: "prod-eu-1"}
	h := newHarness(t, src, func(cfg *LoopConfig) { cfg.Enrichers = append(cfg.Enrichers, ident) })

	snat := netip.MustParseAddrPort("172.31.0.2:40123")
	c := tcpConn(40020, 20, 1000, 10, 2000, 20)
	c.ProxySnatIP, c.ProxySnatPort = snat.Addr().As16(), snat.Port()
	ev := eventOf(c)
	h.send(at(time.Second), conntrack.EventNew, &ev)
	src.set(c)
	h.poll(at(2 * time.Second))
	h.tick(at(12 * time.Second))
	plain := tcpConn(40021, 21, 10, 1, 20, 1)
	more := c
	more.Fwd, more.Rev = flow.Counters{Bytes: 1500, Packets: 15}, flow.Counters{Bytes: 2500, Packets: 25}
	src.set(more, plain)
	h.poll(at(13 * time.Second))
	h.stop(at(14 * time.Second))

	got := h.sink.all()
	if len(got) < 2 {
		t.Fatalf("got %d records, want at least 2", len(got))
	}
	seen := map[uint16]int{}
	for _, r := range got {
		seen[r.Tuple.SrcPort]++
		if r.ClusterID != "prod-eu-1" {
			t.Errorf("record of port %d: ClusterID %q, want prod-eu-1", r.Tuple.SrcPort, r.ClusterID)
		}
		s, ok := r.ProxySnat()
		switch r.Tuple.SrcPort {
		case 40020:
			if !ok || s != snat {
				t.Errorf("record %s of the SNATed connection: ProxySnat %v %v, want %v", r.EndReason, s, ok, snat)
			}
		case 40021:
			if ok {
				t.Errorf("record of the plain connection has ProxySnat %v", s)
			}
		}
	}
	if seen[40020] < 2 || seen[40021] < 1 {
		t.Errorf("records per source port %v, want an active and a final one of 40020 and one of 40021", seen)
	}
	checkSums(t, got)
}

// Without Kubernetes the configured id is all there is: no context source
// is needed for it, and none is started to find one.
func TestClusterIDFromConfigNeedsNoContextSource(t *testing.T) {
	cfg := agentconfig.Default()
	cfg.ClusterID = "edge-7"
	ident := &clusterIdentity{id: cfg.ClusterID}
	st, err := newContextStage(cfg, ident, nil)
	if err != nil || st != nil {
		t.Fatalf("newContextStage = %v, %v; want no stage", st, err)
	}
	var r flow.Record
	ident.Enrich(&r)
	if r.ClusterID != "edge-7" {
		t.Errorf("ClusterID %q, want edge-7", r.ClusterID)
	}
}

func TestNewStampsTheConfiguredClusterID(t *testing.T) {
	cfg := loadConfig(t, "nodeName: node-a\nclusterID: prod-eu-1\n")
	a, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var r flow.Record
	for _, e := range a.loop.cfg.Enrichers {
		e.Enrich(&r)
	}
	if r.ClusterID != "prod-eu-1" {
		t.Errorf("enrichers give ClusterID %q, want the configured prod-eu-1", r.ClusterID)
	}
}
