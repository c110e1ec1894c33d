package agent

import (
	"context"
	"errors"
	"net/netip"
	"sync"
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
	ident := newClusterIdentity("prod-eu-1")
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
	ident := newClusterIdentity(cfg.ClusterID)
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

// flakyUIDs fails its first fails reads, then returns uid.
type flakyUIDs struct {
	mu    sync.Mutex
	fails int
	calls int
	uid   string
}

func (f *flakyUIDs) ClusterUID(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.fails {
		return "", errors.New("the server is currently unable to handle the request")
	}
	return f.uid, nil
}

func (f *flakyUIDs) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// A failed read of the cluster id is retried in the background until it
// succeeds: records exported meanwhile carry an empty id, later ones the
// cluster's.
func TestClusterIDIsRetriedUntilItIsRead(t *testing.T) {
	ident := newClusterIdentity("")
	lookup, err := newClusterIDLookup(ident, time.Millisecond, 4*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := &flakyUIDs{fails: 5, uid: "0d9c1e2f-uid"}
	done := lookup.start(context.Background(), src)
	// The first read failed before start returned: the loop's first
	// records go out without an id rather than waiting for one.
	var r flow.Record
	ident.Enrich(&r)
	if r.ClusterID != "" {
		t.Errorf("ClusterID %q right after a failed read, want empty", r.ClusterID)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("lookup still running after %d reads", src.count())
	}
	ident.Enrich(&r)
	if r.ClusterID != "0d9c1e2f-uid" {
		t.Errorf("ClusterID %q after the retries, want 0d9c1e2f-uid", r.ClusterID)
	}
	if got := src.count(); got != 6 {
		t.Errorf("%d reads, want 6 (5 failures, then the one that succeeded, then none)", got)
	}
	if got := counterValue(t, lookup.retries); got != 5 {
		t.Errorf("retries counter %v, want 5", got)
	}
}

// A lookup that never succeeds stops with the agent.
func TestClusterIDRetryStopsWithTheAgent(t *testing.T) {
	ident := newClusterIdentity("")
	lookup, err := newClusterIDLookup(ident, time.Millisecond, 2*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := &flakyUIDs{fails: 1 << 30}
	ctx, cancel := context.WithCancel(context.Background())
	done := lookup.start(ctx, src)
	for src.count() < 3 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("lookup did not stop when its context ended")
	}
	if id := ident.get(); id != "" {
		t.Errorf("cluster id %q, want empty", id)
	}
}

// A configured or first-time-read id starts nothing in the background.
func TestClusterIDReadAtOnceStartsNoRetry(t *testing.T) {
	ident := newClusterIdentity("")
	lookup, err := newClusterIDLookup(ident, time.Hour, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := &flakyUIDs{uid: "uid-1"}
	select {
	case <-lookup.start(context.Background(), src):
	default:
		t.Fatal("lookup still running after a successful first read")
	}
	if ident.get() != "uid-1" || src.count() != 1 {
		t.Errorf("id %q after %d reads, want uid-1 after 1", ident.get(), src.count())
	}
}
