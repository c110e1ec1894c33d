//go:build integration

package main

import (
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

const benchRecords = 1_000_000

// BenchmarkIPFIXToClickHouse measures records per second from two agents'
// IPFIX exporters through collector, correlator and sink to rows counted in
// ClickHouse, on this machine (agents, aggregator and ClickHouse share its
// cores). Baselines from the same run: the ClickHouse writer alone with
// prepared records, and the IPFIX path into a discarding sink.
//
//	go test -tags integration -run '^$' -bench IPFIXToClickHouse -benchmem -benchtime 1x ./cmd/flowlens-aggregator
func BenchmarkIPFIXToClickHouse(b *testing.B) {
	// Per-batch log lines would interleave with the benchmark's output.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	defer klog.LogToStderr(true)
	ch := clickhousetest.Start(b)
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	recs := make([]flow.Record, benchRecords)
	for i := range recs {
		recs[i] = intraNode(i, start)
	}
	queue := aggregatorconfig.DefaultQueue()
	queue.QueueRecords, queue.MaxBatch, queue.CommitInterval = 600_000, 100_000, aggregatorconfig.Duration(250*time.Millisecond)

	b.Run("baseline=clickhouse-writer-only", func(b *testing.B) {
		b.ReportAllocs()
		w, err := clickhouse.New(clickhouse.Config{Addr: ch.Addr, Aggregator: "bench", Table: "writer_only"})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		out := make([]*correlate.Record, len(recs))
		for i := range recs {
			out[i] = &correlate.Record{Record: recs[i]}
		}
		ctx := context.Background()
		if err := w.EnsureSchema(ctx); err != nil {
			b.Fatal(err)
		}
		for range b.N {
			began := time.Now()
			for i := 0; i < len(out); i += int(queue.MaxBatch) {
				batch := out[i:min(i+queue.MaxBatch, len(out))]
				if _, err := w.Write(ctx, &sink.Batch{ID: uint64(i), Records: batch}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(out))/time.Since(began).Seconds(), "records/s")
		}
	})

	b.Run("baseline=ipfix-to-discard", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			// Only the capturing sink stays: it keeps pointers, nothing more.
			rate := runIPFIXBench(b, testConfig(b, "tcp://127.0.0.1:0"), true, recs, func(ra *runningAggregator) int { return len(ra.capture.records()) })
			b.ReportMetric(rate, "records/s")
		}
	})

	b.Run("ipfix-to-clickhouse", func(b *testing.B) {
		b.ReportAllocs()
		for n := range b.N {
			table := "flows_e2e_" + strconv.Itoa(n)
			cfg := testConfig(b, "tcp://127.0.0.1:0")
			cfg.Sinks.JSONL.Enabled = false
			cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.ClickHouse.Addr, cfg.Sinks.ClickHouse.Table = true, ch.Addr, table
			cfg.Sinks.ClickHouse.Queue = queue
			rate := runIPFIXBench(b, cfg, false, recs, func(*runningAggregator) int {
				out, err := ch.Query("SELECT count() FROM " + table)
				if err != nil {
					return 0
				}
				v, _ := strconv.Atoi(strings.TrimSpace(out))
				return v
			})
			b.ReportMetric(rate, "records/s")
			b.ReportMetric(100_000, "target-records/s")
		}
	})

	// Inter-node: agent 1 sends every source half, agent 2 every
	// destination half; two records in, one correlated row out.
	b.Run("ipfix-to-clickhouse-inter-node-pairs", func(b *testing.B) {
		b.ReportAllocs()
		pairs := benchRecords / 2
		var parts [2][]flow.Record
		for i := 0; i < pairs; i++ {
			src, dst := halves(i, start)
			parts[0], parts[1] = append(parts[0], src), append(parts[1], dst)
		}
		for n := range b.N {
			table := "flows_pairs_" + strconv.Itoa(n)
			cfg := testConfig(b, "tcp://127.0.0.1:0")
			// One agent may run seconds ahead of the other while the
			// machine is saturated: give halves the production default.
			cfg.Correlation.CorrelationWait = aggregatorconfig.Duration(correlate.DefaultCorrelationWait)
			cfg.Sinks.JSONL.Enabled = false
			cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.ClickHouse.Addr, cfg.Sinks.ClickHouse.Table = true, ch.Addr, table
			cfg.Sinks.ClickHouse.Queue = queue
			rate := runIPFIXBenchParts(b, cfg, false, parts, pairs, func(*runningAggregator) int {
				out, err := ch.Query("SELECT count() FROM " + table + " WHERE correlation = 'correlated'")
				if err != nil {
					return 0
				}
				v, _ := strconv.Atoi(strings.TrimSpace(out))
				return v
			})
			b.ReportMetric(rate, "records/s")
			b.ReportMetric(rate/2, "rows/s")
		}
	})
}

// runIPFIXBench sends recs from two agents and returns records per second
// until done reports them all out of the pipeline.
func runIPFIXBench(b *testing.B, cfg *aggregatorconfig.Config, captureOnly bool, recs []flow.Record, done func(*runningAggregator) int) float64 {
	b.Helper()
	half := len(recs) / 2
	return runIPFIXBenchParts(b, cfg, captureOnly, [2][]flow.Record{recs[:half], recs[half:]}, len(recs), done)
}

// runIPFIXBenchParts sends parts[i] from agent i and returns input records
// per second until done reports want outputs.
func runIPFIXBenchParts(b *testing.B, cfg *aggregatorconfig.Config, captureOnly bool, parts [2][]flow.Record, want int, done func(*runningAggregator) int) float64 {
	b.Helper()
	cfg.Correlation.MaxConnections = 2 * (len(parts[0]) + len(parts[1]))
	ra := newTestAggregator(b, cfg)
	if captureOnly {
		ra.sinks = ra.sinks[len(ra.sinks)-1:]
	} else {
		// The capturing sink would keep every record alive for the GC to
		// scan: measure the configured sinks alone.
		ra.sinks = ra.sinks[:len(ra.sinks)-1]
	}
	ra.start(b)
	addr := ra.addr(b, "tcp")
	agents := []*agent{startAgentTB(b, addr, 1), startAgentTB(b, addr, 2)}
	b.ResetTimer()
	began := time.Now()
	errc := make(chan struct{}, 2)
	for i, a := range agents {
		go func() {
			part := parts[i]
			for j := range part {
				for !a.exp.Export(&part[j]) {
					time.Sleep(100 * time.Microsecond)
				}
			}
			a.exp.Flush()
			errc <- struct{}{}
		}()
	}
	<-errc
	<-errc
	deadline := time.Now().Add(5 * time.Minute)
	for done(ra) < want {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d records out after 5 minutes", done(ra), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	el := time.Since(began)
	b.StopTimer()
	for _, a := range agents {
		a.stop()
	}
	ra.stop(b)
	return float64(len(parts[0])+len(parts[1])) / el.Seconds()
}

func startAgentTB(b *testing.B, addr string, domain uint32) *agent {
	b.Helper()
	exp, err := ipfixexport.New(ipfixexport.Config{
		Address: addr, Transport: ipfixexport.TCP, ObservationDomainID: domain,
		FlushInterval: 20 * time.Millisecond, BufferRecords: 200_000,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{exp: exp, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(a.done); _ = exp.Run(ctx) }()
	b.Cleanup(a.stop)
	return a
}
