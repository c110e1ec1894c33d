package ipfixexport

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// A collector stopped for ten seconds in the middle of a steady stream:
// everything exported before, during and after arrives exactly once.
func TestCollectorOutageLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	const (
		rate   = 500 // records/s
		before = 2 * time.Second
		outage = 10 * time.Second
		after  = 2 * time.Second
	)
	var got collected
	addr, stopFirst := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	reg := prometheus.NewRegistry()
	e, stopExporter := startExporter(t, Config{
		Address: addr, Transport: TCP, BufferRecords: 2 * rate * int(outage/time.Second),
		FlushInterval: 100 * time.Millisecond, ReconnectMin: 100 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
	}, reg)

	var produced atomic.Uint64
	var dropped atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Catch up with the wall clock rather than count ticks, so a loaded
		// machine still produces rate records per second.
		start := time.Now()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				for due := uint64(time.Since(start).Seconds() * rate); produced.Load() < due; {
					seq := produced.Load()
					r := testRecord(seq, seq%4 == 0)
					if !e.Export(&r) {
						dropped.Add(1)
					}
					produced.Add(1)
				}
			}
		}
	}()

	time.Sleep(before)
	stopFirst()
	atOutage := produced.Load()
	time.Sleep(outage)
	startCollector(t, ipfixcollect.Config{Network: "tcp", Address: addr}, &got)
	time.Sleep(after)
	close(done)
	wg.Wait()
	n := produced.Load()
	e.Flush()
	waitFor(t, 10*time.Second, "every record", func() bool { return uint64(len(got.snapshot())) >= n })
	stopExporter()

	if d := dropped.Load(); d != 0 {
		t.Fatalf("%d records dropped by a buffer sized for the outage", d)
	}
	if n < atOutage+uint64(rate)*uint64(outage/time.Second)*9/10 {
		t.Fatalf("only %d records produced, %d during the outage: the test did not stream", n, n-atOutage)
	}
	seqs := seqsOf(got.snapshot())
	if s := describeSeqs(seqs, n); !strings.HasPrefix(s, "0 missing") || !strings.Contains(s, " 0 duplicated") || len(got.snapshot()) != int(n) {
		t.Errorf("after the outage: %s; %d records received", s, len(got.snapshot()))
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "peer_closed"); v < 1 {
		t.Errorf("peer_closed errors = %v, want the outage counted", v)
	}
	t.Logf("%d records, %d of them produced after the collector stopped; resent after the failure: %v", n, n-atOutage,
		metricValue(t, reg, "flowlens_ipfix_exporter_records_resent_total"))
}
