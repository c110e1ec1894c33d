//go:build integration

package shardinge2e_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/shard"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// benchNodes are the two simulated nodes whose agents the load generator
// plays: node-a reports every connection's source half, node-b its
// destination half, as flowlens agents do (both ends' pods named, the
// observation domain derived from the node name).
var benchNodes = [2]string{"node-a", "node-b"}

// scaleResult is one case's figures, kept to print the comparison.
type scaleResult struct {
	recordsPerSec, aggCPUPer1k, chCPUPer1k, rowsPerSecPerShard float64
}

// BenchmarkShardedAggregators measures records/s through 1 and through 3
// flowlens-aggregator replicas (real binaries, write-ahead log off, the
// production default) into a two-shard ClickHouse cluster (two
// clickhouse-server processes), fed by a load generator that sends real
// IPFIX over TCP the way two agents would: one exporter session per
// replica, each connection to the replica pkg/shard's ring picks for it,
// both halves of an inter-node connection so every pair becomes one
// correlated row. CPU is read from /proc for every process (aggregators,
// ClickHouse servers, the generator), so the figures are CPU seconds per
// 1k records: on this two-core machine the processes share the cores and
// the absolute gain of three replicas is capped, the cost per record is
// not. replicas=1 is the baseline of replicas=3 in the same run.
//
// pending-halves measures the memory of a pending correlation: RSS growth
// of a replica holding N one-sided halves.
//
// FLOWLENS_SHARD_BENCH_PAIRS (default 50000) connections per iteration.
//
//	go test -tags integration -run '^$' -bench ShardedAggregators -benchtime 1x ./test/shardinge2e
func BenchmarkShardedAggregators(b *testing.B) {
	pairs := 50000
	if v := os.Getenv("FLOWLENS_SHARD_BENCH_PAIRS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("FLOWLENS_SHARD_BENCH_PAIRS=%q: want a positive integer", v)
		}
		pairs = n
	}
	// The generator's exporters log every (re)connection; the figures
	// would drown in them.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	defer klog.LogToStderr(true)
	ch := clickhousetest.StartCluster(b, numShards)
	chPids := make([]int, ch.Len())
	for i := range chPids {
		pid, err := serverPid(ch.Server(i))
		if err != nil {
			b.Fatal(err)
		}
		chPids[i] = pid
	}
	results := map[int]scaleResult{}
	runs := 0
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			runs++
			results[n] = runScale(b, ch, chPids, n, pairs, fmt.Sprintf("bench_r%d_%d", n, runs))
		})
	}
	if one, three := results[1], results[3]; one.recordsPerSec > 0 && three.recordsPerSec > 0 {
		b.Logf("3 replicas vs 1: %.0f vs %.0f records/s (x%.2f); aggregator CPU %.4f vs %.4f s per 1k records; ClickHouse CPU %.4f vs %.4f s per 1k rows",
			three.recordsPerSec, one.recordsPerSec, three.recordsPerSec/one.recordsPerSec,
			three.aggCPUPer1k, one.aggCPUPer1k, three.chCPUPer1k, one.chCPUPer1k)
	}
	b.Run("pending-halves", func(b *testing.B) {
		runs++
		runPending(b, ch, pairs, fmt.Sprintf("bench_pending_%d", runs))
	})
}

// benchRecord is connection i of iteration it as either node reports it:
// an ended inter-node TCP connection with both pods named (the exporter's
// observation domain tells the halves apart, as with real agents).
func benchRecord(i, it int, start time.Time) flow.Record {
	r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: flow.EndOfFlow}
	r.Tuple = flow.NewTuple(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), netip.MustParseAddr("10.245.0.7"),
		uint16(1024+it), 8080, flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	r.StartNanos = start.UnixNano()
	r.StopNanos = start.Add(time.Second).UnixNano()
	r.ExportNanos = r.StopNanos
	r.TCPState = flow.TCPStateTimeWait
	r.Fwd = flow.Counters{Packets: uint64(i%50 + 3), Bytes: uint64(60 * (i%50 + 3))}
	r.Rev = flow.Counters{Packets: uint64(i%30 + 3), Bytes: uint64(1400 * (i%30 + 3))}
	r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
	r.Source = flow.Endpoint{PodName: fmt.Sprintf("client-%d", i%1000), PodNamespace: "shop", NodeName: benchNodes[0]}
	r.Destination = flow.Endpoint{PodName: "db", PodNamespace: "store", NodeName: benchNodes[1]}
	return r
}

// generator plays one node's agent: one exporter per replica.
type generator struct {
	ring *shard.Ring
	exps map[string]*ipfixexport.Exporter // by replica address
}

func startGenerator(b *testing.B, node string, replicas []string) *generator {
	b.Helper()
	g := &generator{ring: shard.NewRing(replicas...), exps: map[string]*ipfixexport.Exporter{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, len(replicas))
	for _, addr := range replicas {
		exp, err := ipfixexport.New(ipfixexport.Config{
			Address: addr, Transport: ipfixexport.TCP, ObservationDomainID: flow.DefaultObservationDomainID(node),
			FlushInterval: 20 * time.Millisecond, BufferRecords: 100_000,
		}, nil)
		if err != nil {
			b.Fatal(err)
		}
		g.exps[addr] = exp
		go func() { _ = exp.Run(ctx); done <- struct{}{} }()
	}
	b.Cleanup(func() {
		cancel()
		for range replicas {
			<-done
		}
	})
	return g
}

// send exports r to its connection's replica, waiting while that
// replica's buffer is full (TCP backpressure from a busy aggregator).
func (g *generator) send(r *flow.Record) {
	exp := g.exps[g.ring.OwnerID(shard.Key(r.Tuple))]
	for !exp.Export(r) {
		time.Sleep(200 * time.Microsecond)
	}
}

func (g *generator) flush() {
	for _, e := range g.exps {
		e.Flush()
	}
}

// cpuOf sums the CPU time of pids.
func cpuOf(b *testing.B, pids []int) time.Duration {
	b.Helper()
	var total time.Duration
	for _, pid := range pids {
		d, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		total += d
	}
	return total
}

func runScale(b *testing.B, ch *clickhousetest.Cluster, chPids []int, n, pairs int, tbl string) scaleResult {
	var addrs []string
	var aggPids []int
	for i := 0; i < n; i++ {
		r := replica{id: fmt.Sprintf("bench-%d", i), listen: freeAddr(b)}
		a := agenttest.StartAggregator(b, aggregatorBin, aggregatorConfig(r, ch, tbl, 10*time.Second, 250*time.Millisecond))
		addrs = append(addrs, r.listen)
		aggPids = append(aggPids, a.Pid())
	}
	gens := [2]*generator{startGenerator(b, benchNodes[0], addrs), startGenerator(b, benchNodes[1], addrs)}
	self := []int{os.Getpid()}
	start := time.Now().Add(-time.Minute).Truncate(time.Second)

	b.ResetTimer()
	aggCPU0, chCPU0, genCPU0 := cpuOf(b, aggPids), cpuOf(b, chPids), cpuOf(b, self)
	began := time.Now()
	for it := 0; it < b.N; it++ {
		done := make(chan struct{}, 2)
		for _, g := range gens {
			go func() {
				for i := 0; i < pairs; i++ {
					r := benchRecord(i, it, start)
					g.send(&r)
				}
				g.flush()
				done <- struct{}{}
			}()
		}
		<-done
		<-done
		want := (it + 1) * pairs
		deadline := time.Now().Add(5 * time.Minute)
		for {
			got := count(b, ch, 0, "SELECT count() FROM "+tbl+" WHERE correlation = 'correlated'")
			if got >= want {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d correlated rows after 5 minutes", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	elapsed := time.Since(began)
	aggCPU, chCPU, genCPU := cpuOf(b, aggPids)-aggCPU0, cpuOf(b, chPids)-chCPU0, cpuOf(b, self)-genCPU0
	b.StopTimer()

	records, rows := float64(2*pairs*b.N), float64(pairs*b.N)
	all := count(b, ch, 0, "SELECT count() FROM "+tbl)
	if all != pairs*b.N {
		b.Errorf("%d rows for %d connections: halves stored apart (unmatched) or twice", all, pairs*b.N)
	}
	var perShard []int
	for i := 0; i < ch.Len(); i++ {
		perShard = append(perShard, count(b, ch, i, "SELECT count() FROM "+tbl+"_local"))
	}
	res := scaleResult{
		recordsPerSec:      records / elapsed.Seconds(),
		aggCPUPer1k:        aggCPU.Seconds() / records * 1000,
		chCPUPer1k:         chCPU.Seconds() / rows * 1000,
		rowsPerSecPerShard: rows / elapsed.Seconds() / float64(ch.Len()),
	}
	// The machine is shared: the load average says how much of it the
	// run had, which the absolute records/s depend on (CPU per record
	// much less).
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("%d replicas: %.0f records in %s = %.0f records/s (%.0f rows/s, %v rows per shard); CPU: aggregators %.2f s (%.4f s per 1k records, %.2f cores), ClickHouse %.2f s (%.4f s per 1k rows), generator %.2f s; load average %s",
		n, records, elapsed.Round(time.Millisecond), res.recordsPerSec, rows/elapsed.Seconds(), perShard,
		aggCPU.Seconds(), res.aggCPUPer1k, aggCPU.Seconds()/elapsed.Seconds(), chCPU.Seconds(), res.chCPUPer1k, genCPU.Seconds(),
		strings.Join(strings.Fields(string(load))[:3], " "))
	b.ReportMetric(res.recordsPerSec, "records/s")
	b.ReportMetric(res.aggCPUPer1k, "agg-cpu-s/1k-records")
	b.ReportMetric(res.chCPUPer1k, "ch-cpu-s/1k-rows")
	b.ReportMetric(genCPU.Seconds()/records*1000, "gen-cpu-s/1k-records")
	b.ReportMetric(res.rowsPerSecPerShard, "rows/s/shard")
	return res
}

// runPending sends one replica the source halves of pairs connections
// whose destination halves never come, with a correlation wait longer
// than the run, and reports the replica's RSS growth per pending half.
func runPending(b *testing.B, ch *clickhousetest.Cluster, pairs int, tbl string) {
	r := replica{id: "bench-pending", listen: freeAddr(b)}
	a := agenttest.StartAggregator(b, aggregatorBin, aggregatorConfig(r, ch, tbl, time.Hour, 250*time.Millisecond))
	g := startGenerator(b, benchNodes[0], []string{r.listen})
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	// Warm-up halves, more than the input queue holds: every page of the
	// queue (allocated at start, touched as records pass) is resident
	// before the baseline, so the growth below is the pending halves'.
	const warmup = 70000
	for i := 0; i < warmup; i++ {
		rec := benchRecord(i, 60000, start)
		g.send(&rec)
	}
	g.flush()
	a.WaitMetric(b, "flowlens_aggregator_pending_connections", 5*time.Minute, func(v float64) bool { return v >= warmup })
	rss0, err := procRSS(a.Pid())
	if err != nil {
		b.Fatal(err)
	}
	heap0 := mustSum(b, r.id, a.Metrics(b), "go_memstats_heap_inuse_bytes")
	b.ResetTimer()
	held := warmup
	for it := 0; it < b.N; it++ {
		for i := 0; i < pairs; i++ {
			rec := benchRecord(i, it, start)
			g.send(&rec)
		}
		g.flush()
		held += pairs
		a.WaitMetric(b, "flowlens_aggregator_pending_connections", 5*time.Minute, func(v float64) bool { return v >= float64(held) })
	}
	b.StopTimer()
	rss1, err := procRSS(a.Pid())
	if err != nil {
		b.Fatal(err)
	}
	page := a.Metrics(b)
	heap1 := mustSum(b, r.id, page, "go_memstats_heap_inuse_bytes")
	if rows := count(b, ch, 0, "SELECT count() FROM "+tbl); rows != 0 {
		b.Errorf("%d rows stored while every half should wait for its peer", rows)
	}
	added := held - warmup
	perRSS, perHeap := float64(rss1-rss0)/float64(added), (heap1-heap0)/float64(added)
	b.Logf("%d more pending one-sided halves (%d held in all): RSS %.1f -> %.1f MiB (%.0f B each), heap in use %.1f -> %.1f MiB (%.0f B each)",
		added, held, float64(rss0)/(1<<20), float64(rss1)/(1<<20), perRSS, heap0/(1<<20), heap1/(1<<20), perHeap)
	b.ReportMetric(perRSS, "rss-B/pending")
	b.ReportMetric(perHeap, "heap-B/pending")
}
