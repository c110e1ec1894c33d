//go:build integration

package agent

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// Issue 12: a table far larger than the export buffer comes due at once (at
// start-up every connection is first seen in one dump; these synthetic
// entries never move, so all of them reach their idle timeout in the same
// tick) and the collector reads slowly at first. The buffer refuses what it
// cannot hold, the store keeps it, and every connection's record arrives,
// once, with nothing dropped.
func TestStartupBacklogReachesASlowCollectorWithoutLoss(t *testing.T) {
	const (
		entries = 50_000
		buffer  = 1000
	)
	start := time.Now()
	path := conntracktest.Table(t, entries)
	t.Logf("built a %d-entry conntrack table in %v", entries, time.Since(start).Round(time.Millisecond))

	// The collector: the first 20000 records are read slowly (a collector
	// busy with something else), then at full speed.
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[flow.Tuple]int{}
	var records, decodeErrs atomic.Int64
	colCtx, colCancel := context.WithCancel(context.Background())
	colDone := make(chan error, 1)
	go func() {
		colDone <- col.Run(colCtx, func(r ipfixcollect.Record) {
			n := records.Add(1)
			if n <= 20_000 {
				time.Sleep(100 * time.Microsecond)
			}
			fr, err := r.FlowRecord()
			if err != nil {
				decodeErrs.Add(1)
				return
			}
			mu.Lock()
			seen[fr.Tuple]++
			mu.Unlock()
		})
	}()
	defer func() {
		colCancel()
		if err := <-colDone; err != nil {
			t.Errorf("collector: %v", err)
		}
	}()

	reg := prometheus.NewRegistry()
	exp, err := ipfixexport.New(ipfixexport.Config{Address: col.Addr().String(), Transport: ipfixexport.TCP,
		BufferRecords: buffer, FlushInterval: 100 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	expCtx, expCancel := context.WithCancel(context.Background())
	expDone := make(chan error, 1)
	go func() { expDone <- exp.Run(expCtx) }()

	src, err := conntrack.New(conntrack.Config{NetNSPath: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	loop, err := NewLoop(LoopConfig{
		Source:       src,
		PollInterval: 5 * time.Second,
		TickInterval: 100 * time.Millisecond,
		Queue: expirequeue.Config{ActiveTimeout: 2 * time.Second, IdleTimeout: 3 * time.Second,
			SpreadActiveDeadlines: true},
		MaxConnections: 2 * entries,
		Sink:           exp,
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	loopCtx, loopCancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	started := time.Now()
	go func() { loop.Run(loopCtx); close(loopDone) }()

	distinct := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for distinct() < entries && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(started)
	// Anything extra (a duplicate) would arrive right behind.
	time.Sleep(500 * time.Millisecond)
	loopCancel()
	<-loopDone
	expCancel()
	if err := <-expDone; err != nil {
		t.Errorf("exporter: %v", err)
	}

	got := gatherAll(t, reg)
	t.Logf("%d distinct connections of %d arrived in %v (%d records, %d undecodable); exporter refused %v offers, queue refused %v; dropped buffer_full=%v shutdown=%v",
		distinct(), entries, took.Round(time.Millisecond), records.Load(), decodeErrs.Load(),
		got["flowlens_ipfix_exporter_records_refused_total"], got["flowlens_expirequeue_records_refused_total"],
		got[`flowlens_ipfix_exporter_records_dropped_total{reason="buffer_full"}`], got[`flowlens_ipfix_exporter_records_dropped_total{reason="shutdown"}`])
	if n := distinct(); n != entries {
		t.Fatalf("%d of %d connections arrived", n, entries)
	}
	mu.Lock()
	for tuple, n := range seen {
		if n != 1 {
			t.Errorf("%s arrived %d times, want once", tuple, n)
		}
	}
	mu.Unlock()
	if decodeErrs.Load() != 0 {
		t.Errorf("%d records could not be decoded", decodeErrs.Load())
	}
	for _, reason := range []string{"buffer_full", "too_large", "shutdown"} {
		if v := got[`flowlens_ipfix_exporter_records_dropped_total{reason="`+reason+`"}`]; v != 0 {
			t.Errorf("exporter dropped %v records (%s), want 0", v, reason)
		}
	}
	if got["flowlens_expirequeue_records_refused_total"] == 0 {
		t.Error("the queue never saw a refusal: the backlog did not exceed the buffer, so the test proves nothing")
	}
}

// gatherAll returns every counter and gauge in reg, labelled ones as
// name{label="value"}.
func gatherAll(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += `{` + l.GetName() + `="` + l.GetValue() + `"}`
			}
			out[name] = metricNumber(m)
		}
	}
	return out
}

func metricNumber(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}
