//go:build integration

package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// crashingClickHouse stands for the process dying around an insert: with
// insert set, ClickHouse stores the batch and the process dies before the
// acknowledgement leads to the commit frame (the SIGKILL the sharding e2e
// hit); without it, the process dies before the block reaches the server.
// Either way the committing writer sees a failure and writes no commit.
type crashingClickHouse struct {
	*clickhouse.Writer
	insert bool
}

var errKilled = errors.New("process killed before the commit")

func (c *crashingClickHouse) Write(ctx context.Context, b *sink.Batch) (int, error) {
	if c.insert {
		if _, err := c.Writer.Write(ctx, b); err != nil {
			return 0, err
		}
	}
	return 0, errKilled
}

// A batch ClickHouse stored but whose WAL commit was never written is not
// stored again by the replay after a restart, however the replay regroups
// the records: every connection is stored once, its deltas add up to what
// the agents sent, and the skipped rows are counted. Deterministic: the
// crash is placed between the insert and the commit, no timing involved.
func TestReplayAfterCrashBetweenInsertAndCommitStoresEachRowOnce(t *testing.T) {
	ch := clickhousetest.Start(t)
	cfg := clickhouseConfig(t, ch.Addr, "tcp://127.0.0.1:0")
	cfg.Sinks.JSONL.Enabled = true // a second sink: it still gets everything it had not written
	cfg.WAL.Enabled = true
	cfg.WAL.Dir = filepath.Join(t.TempDir(), "wal")
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	cc := correlateConfig(cfg)
	chCfg := clickhouse.Config{Addr: ch.Addr, Aggregator: cfg.AggregatorID}
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)

	type key struct {
		src  string
		port uint16
	}
	wantPackets := map[key]uint64{} // per connection: the sum of the source side's deltas
	wantRows := map[key]int{}
	keyOf := func(r *flow.Record) key { return key{r.Tuple.Src().String(), r.Tuple.SrcPort} }

	// Run 1.
	w1, err := newWALStage(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ch1, err := clickhouse.New(chCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch1.Close()
	crashing := &crashingClickHouse{Writer: ch1}
	cw := w1.wrap("clickhouse", crashing, 0)
	c1, err := correlate.New(cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rows []*correlate.Record
	emit := func(r *correlate.Record) { rows = append(rows, r) }
	send := func(in correlate.Input, now time.Time) {
		w1.send(in, func(in correlate.Input) { c1.Add(&in, now, emit) })
	}
	now := time.Now()
	// Batch 1, stored by ClickHouse then the crash: ten ended intra-node
	// connections (passed through), ten correlated inter-node ones (two
	// inputs per row), and the first update of five long connections,
	// exported on the active timeout while their second update is still
	// held when the process dies (the replay merges what the first run
	// kept apart: no row identity survives it, the batch id does).
	for i := range 10 {
		r := intraNode(i, t0)
		send(correlate.Input{Record: r, Exporter: "node-c", ExporterNode: "node-c"}, now)
		wantPackets[keyOf(&r)] += r.FwdDelta.Packets
		wantRows[keyOf(&r)] = 1
	}
	for i := range 10 {
		src, dst := halves(i, t0)
		send(correlate.Input{Record: src, Exporter: "node-a", ExporterNode: "node-a"}, now)
		send(correlate.Input{Record: dst, Exporter: "node-b", ExporterNode: "node-b"}, now)
		wantPackets[keyOf(&src)] += src.FwdDelta.Packets
		wantRows[keyOf(&src)] = 1
	}
	long := func(i int, packets uint64) flow.Record {
		r := intraNode(200+i, t0)
		r.EndReason = flow.EndActiveTimeout
		r.FwdDelta = flow.Counters{Packets: packets, Bytes: 100 * packets}
		return r
	}
	for i := range 5 {
		r := long(i, 7)
		send(correlate.Input{Record: r, Exporter: "node-c", ExporterNode: "node-c"}, now)
		wantPackets[keyOf(&r)] += 7 + 3 // the second update below
		wantRows[keyOf(&r)] = 2
	}
	c1.Expire(now.Add(cc.ActiveTimeout+time.Second), emit)
	if len(rows) != 25 {
		t.Fatalf("run 1 formed %d rows for batch 1, want 25", len(rows))
	}
	crashing.insert = true
	b1 := &sink.Batch{ID: 0x5eed_0000_0001, Records: rows}
	if _, err := cw.Write(context.Background(), b1); !errors.Is(err, errKilled) {
		t.Fatalf("batch 1: %v", err)
	}
	if got := chQuery(t, ch, "SELECT count() FROM flows"); got != "25" {
		t.Fatalf("after batch 1 ClickHouse holds %s rows, want 25", got)
	}
	// Batch 2 never reached the server.
	rows = nil
	for i := range 10 {
		r := intraNode(100+i, t0)
		send(correlate.Input{Record: r, Exporter: "node-c", ExporterNode: "node-c"}, now)
		wantPackets[keyOf(&r)] += r.FwdDelta.Packets
		wantRows[keyOf(&r)] = 1
	}
	crashing.insert = false
	if _, err := cw.Write(context.Background(), &sink.Batch{ID: 0x5eed_0000_0002, Records: rows}); !errors.Is(err, errKilled) {
		t.Fatalf("batch 2: %v", err)
	}
	// The long connections' second updates are in the correlator only.
	for i := range 5 {
		send(correlate.Input{Record: long(i, 3), Exporter: "node-c", ExporterNode: "node-c"}, now.Add(cc.ActiveTimeout+2*time.Second))
	}
	// The crash: run 1's log is never closed or committed again.

	// Run 2 over the same log.
	reg := prometheus.NewRegistry()
	w2, err := newWALStage(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.close()
	ch2, err := clickhouse.New(chCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ch2.Close()
	capture := &captureWriter{}
	ctx, cancel := context.WithCancel(context.Background())
	var fan sink.Fanout
	done := make(chan struct{}, 2)
	for i, w := range []sink.Writer{w2.wrap("clickhouse", ch2, 0), w2.wrap("jsonl", capture, 1)} {
		name := []string{"clickhouse", "jsonl"}[i]
		s, err := sink.New(sinkConfig(cfg, name, w, cfg.Sinks.ClickHouse.Queue), nil)
		if err != nil {
			t.Fatal(err)
		}
		fan = append(fan, s)
		go func() { _ = s.Run(ctx); done <- struct{}{} }()
	}
	main, err := correlate.New(cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.replay(main, fan, cc); err != nil {
		t.Fatal(err)
	}
	main.Flush(fan.Put)
	cancel()
	<-done
	<-done

	out := chQuery(t, ch, "SELECT sourceIP, sourceTransportPort, count(), sum(packetDeltaCount) FROM flows GROUP BY sourceIP, sourceTransportPort")
	got := map[key][2]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			t.Fatalf("unexpected row %q", line)
		}
		port, _ := strconv.ParseUint(f[1], 10, 16)
		n, _ := strconv.ParseUint(f[2], 10, 64)
		p, _ := strconv.ParseUint(f[3], 10, 64)
		got[key{f[0], uint16(port)}] = [2]uint64{n, p}
	}
	if len(got) != len(wantRows) {
		t.Errorf("ClickHouse holds %d connections, want %d", len(got), len(wantRows))
	}
	var twice []string
	for k, n := range wantRows {
		g := got[k]
		if g[0] != uint64(n) || g[1] != wantPackets[k] {
			twice = append(twice, fmt.Sprintf("%s:%d %d rows %d packets (want %d rows %d packets)", k.src, k.port, g[0], g[1], n, wantPackets[k]))
		}
	}
	slices.Sort(twice)
	if len(twice) > 0 {
		t.Errorf("%d connections stored wrongly after the replay:\n%s", len(twice), strings.Join(twice, "\n"))
	}
	if got := counterOf(t, w2.alreadyStored); got != 25 {
		t.Errorf("flowlens_aggregator_replay_rows_already_stored_total = %v, want 25 (batch 1)", got)
	}
	if got := counterOf(t, w2.lookupFailures); got != 0 {
		t.Errorf("flowlens_aggregator_replay_lookup_failures_total = %v, want 0", got)
	}
	// The other sink had written nothing: it gets every connection, once
	// per row, with the same deltas.
	jsonPackets := map[key]uint64{}
	for _, r := range capture.records() {
		jsonPackets[keyOf(&r.Record)] += r.FwdDelta.Packets
	}
	if fmt.Sprint(jsonPackets) != fmt.Sprint(wantPackets) {
		t.Errorf("jsonl got packets per connection %v, want %v", jsonPackets, wantPackets)
	}
	if st := w2.log.Stats(); st.Uncommitted != 0 {
		t.Errorf("%d records still uncommitted after the replay was written", st.Uncommitted)
	}
}
