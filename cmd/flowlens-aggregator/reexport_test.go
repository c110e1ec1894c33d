package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// The IPFIX sink re-exports merged records: a downstream collector sees
// one record per connection carrying both nodes' pods.
func TestReexportSendsMergedRecordsToAnotherCollector(t *testing.T) {
	down, err := ipfixcollect.New(ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []flow.Record
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = down.Run(ctx, func(r ipfixcollect.Record) {
			if fr, err := r.FlowRecord(); err == nil {
				mu.Lock()
				got = append(got, fr)
				mu.Unlock()
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })

	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.Sinks.IPFIX.Enabled, cfg.Sinks.IPFIX.Address = true, down.Addr().String()
	cfg.Sinks.IPFIX.HealthElements = true
	cfg.Sinks.IPFIX.CommitInterval = aggregatorconfig.Duration(20 * time.Millisecond)
	ra := startAggregator(t, cfg)
	nodeA := startAgent(t, ra.addr(t, "tcp"), ipfixexport.TCP, 1)
	nodeB := startAgent(t, ra.addr(t, "tcp"), ipfixexport.TCP, 2)
	src, dst := halves(7, time.Now().Add(-time.Minute).Truncate(time.Second))
	nodeA.export(t, src)
	nodeB.export(t, dst)

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("downstream collector got %d records, want 1 merged record", len(got))
	}
	r := got[0]
	if r.Source.PodName != src.Source.PodName || r.Destination.PodName != "server" || r.L7.HTTPVals != src.L7.HTTPVals || r.FlowType != flow.FlowTypeInterNode {
		t.Errorf("re-exported record = %+v / %+v / %+v, want both pods and the L7 fields", r.Source, r.Destination, r.L7)
	}
	// Both nodes' health, merged, and the source node's destination name.
	if r.Health != healthMerged || r.DestinationName != src.DestinationName {
		t.Errorf("re-exported health %+v, name %q; want %+v, %q", r.Health, r.DestinationName, healthMerged, src.DestinationName)
	}
}
