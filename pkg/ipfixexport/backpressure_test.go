package ipfixexport

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// A connected collector slower than the producer makes a full buffer
// refuse records, not drop them: the producer offers them again and every
// record arrives once, with no drop counted.
func TestFullBufferRefusesWhileConnectedAndLosesNothing(t *testing.T) {
	var got collected
	var slow atomic.Bool
	slow.Store(true)
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() {
		done <- col.Run(ctx, func(r ipfixcollect.Record) {
			if slow.Load() {
				time.Sleep(20 * time.Microsecond) // a collector that reads slowly at first
			}
			got.add(r)
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	reg := prometheus.NewRegistry()
	e, _ := startExporter(t, Config{Address: col.Addr().String(), Transport: TCP, BufferRecords: 100,
		FlushInterval: 10 * time.Millisecond}, reg)
	waitFor(t, 5*time.Second, "the connection", func() bool { return e.DownSince().IsZero() })

	const n = 20_000
	refusals, probesFalse := 0, 0
	for i := uint64(0); i < n; i++ {
		r := testRecord(i, i%7 == 0)
		for {
			if !e.Accepts(&r) {
				probesFalse++
			}
			if e.Export(&r) {
				break
			}
			refusals++
			if refusals == 2000 {
				slow.Store(false)
			}
			time.Sleep(100 * time.Microsecond) // the agent retries on its next tick
		}
	}
	waitFor(t, 20*time.Second, "every record", func() bool { return len(got.snapshot()) >= n })
	time.Sleep(50 * time.Millisecond)
	if s := describeSeqs(seqsOf(got.snapshot()), n); s != "0 missing (first 0), 0 duplicated, of 20000" {
		t.Fatalf("received %d records: %s", len(got.snapshot()), s)
	}
	if refusals == 0 {
		t.Fatal("the exporter never refused: the test did not fill its buffer")
	}
	if probesFalse == 0 {
		t.Error("Accepts never reported a full buffer although Export refused")
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 0 {
		t.Errorf("buffer_full drops = %v, want 0", v)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_refused_total"); v != float64(refusals) {
		t.Errorf("refused counter = %v, want %d", v, refusals)
	}
	t.Logf("%d records, %d refusals, 0 dropped", n, refusals)
}

// A collector that went away: the full buffer refuses for
// BackpressureTimeout (the producer keeps the records), then takes further
// records by dropping and counting them.
func TestFullBufferDropsOnlyAfterTheCollectorIsAwayForTheTimeout(t *testing.T) {
	var got collected
	addr, stopCollector := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	reg := prometheus.NewRegistry()
	const timeout = 400 * time.Millisecond
	e, _ := startExporter(t, Config{Address: addr, Transport: TCP, BufferRecords: 10, FlushInterval: 10 * time.Millisecond,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond, BackpressureTimeout: timeout}, reg)
	waitFor(t, 5*time.Second, "the connection", func() bool { return e.DownSince().IsZero() })
	stopCollector()
	waitFor(t, 5*time.Second, "the exporter to see the collector gone", func() bool { return !e.DownSince().IsZero() })
	down := e.DownSince()
	for i := uint64(0); i < 10; i++ {
		r := testRecord(i, false)
		if !e.Export(&r) {
			t.Fatalf("record %d refused by a buffer with room", i)
		}
	}
	r := testRecord(10, false)
	accepts, taken := e.Accepts(&r), e.Export(&r)
	if away := time.Since(down); away < timeout && (accepts || taken) {
		t.Fatalf("a full buffer took a record (Accepts %v, Export %v) while the collector was away for %s, less than BackpressureTimeout", accepts, taken, away)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 0 {
		t.Fatalf("buffer_full drops = %v before the timeout, want 0", v)
	}
	time.Sleep(time.Until(down.Add(timeout + 20*time.Millisecond)))
	if !e.Accepts(&r) {
		t.Fatal("Accepts = false after the collector was away for longer than BackpressureTimeout")
	}
	for i := uint64(10); i < 15; i++ {
		r := testRecord(i, false)
		if !e.Export(&r) {
			t.Fatalf("record %d refused after the timeout; want it taken (dropped and counted)", i)
		}
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 5 {
		t.Fatalf("buffer_full drops = %v, want 5", v)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_buffered_records"); v != 10 {
		t.Fatalf("buffered records = %v, want the 10 kept", v)
	}
}
