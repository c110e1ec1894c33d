package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
)

// After a crash with two sinks at different points, each sink gets again
// exactly the records it had not written: none twice, none missing, and
// once they are written the log holds nothing.
func TestReplayGivesEachSinkWhatItHadNotWritten(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.Sinks.ClickHouse.Enabled = true // only its name is used here
	cfg.WAL.Enabled = true
	cfg.WAL.Dir = filepath.Join(t.TempDir(), "wal")
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Minute)

	// Run 1: ten ended connections; clickhouse wrote 1-5, jsonl 1-3, then
	// the process died (the log is not closed).
	w1, err := newWALStage(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var queued []correlate.Input
	for i := 0; i < 10; i++ {
		w1.send(correlate.Input{Record: intraNode(i, t0), Exporter: "agent"}, func(in correlate.Input) { queued = append(queued, in) })
	}
	for i, in := range queued {
		if in.Seq != uint64(i+1) {
			t.Fatalf("input %d queued with seq %d, want %d", i, in.Seq, i+1)
		}
	}
	if err := w1.log.Commit(0, []uint64{1, 2, 3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	if err := w1.log.Commit(1, []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}

	// Run 2.
	w2, err := newWALStage(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer w2.close()
	caps := []*captureWriter{{}, {}}
	var fan sink.Fanout
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	for i, name := range []string{"clickhouse", "jsonl"} {
		s, err := sink.New(sink.Config{Name: name, Writer: w2.wrap(name, caps[i], i), CommitInterval: 10 * time.Millisecond}, nil)
		if err != nil {
			t.Fatal(err)
		}
		fan = append(fan, s)
		go func() { _ = s.Run(ctx); done <- struct{}{} }()
	}
	main, err := correlate.New(correlateConfig(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.replay(main, fan, correlateConfig(cfg)); err != nil {
		t.Fatal(err)
	}
	main.Flush(fan.Put)
	cancel()
	<-done
	<-done

	ports := func(c *captureWriter) []int {
		var p []int
		for _, r := range c.records() {
			p = append(p, int(r.Tuple.SrcPort)-1024)
		}
		slices.Sort(p)
		return p
	}
	if got := fmt.Sprint(ports(caps[0])); got != "[5 6 7 8 9]" {
		t.Errorf("clickhouse got connections %s again, want [5 6 7 8 9] (it wrote 0-4)", got)
	}
	if got := fmt.Sprint(ports(caps[1])); got != "[3 4 5 6 7 8 9]" {
		t.Errorf("jsonl got connections %s again, want [3 4 5 6 7 8 9] (it wrote 0-2)", got)
	}
	for _, c := range caps {
		for _, r := range c.records() {
			want := intraNode(int(r.Tuple.SrcPort)-1024, t0)
			if r.FwdDelta != want.FwdDelta || r.EndReason != flow.EndOfFlow {
				t.Errorf("replayed row %v: delta %+v reason %v, want %+v end-of-flow", r.Tuple, r.FwdDelta, r.EndReason, want.FwdDelta)
			}
		}
	}
	if st := w2.log.Stats(); st.Uncommitted != 0 {
		t.Errorf("%d records still uncommitted after both sinks wrote the replay", st.Uncommitted)
	}
}

// shardFinder is a fake destination that remembers batches by id.
type shardFinder struct {
	captureWriter
	stored map[uint64]uint64
	err    error
	asked  int
	// askedIDs are the ids asked about, sorted (every attempt).
	askedIDs []uint64
}

func (f *shardFinder) StoredBatches(_ context.Context, ids []uint64) (map[uint64]uint64, error) {
	f.asked++
	f.askedIDs = append(f.askedIDs, ids...)
	slices.Sort(f.askedIDs)
	if f.err != nil {
		return nil, f.err
	}
	out := map[uint64]uint64{}
	for _, id := range ids {
		if n := f.stored[id]; n > 0 {
			out[id] = n
		}
	}
	return out, nil
}

// The batches in flight at a crash whose intents do not name a shard
// (an older log) are looked up on every shard (a batch is in one of
// them); those found on any shard are committed instead of replayed, even
// while another shard fails (a batch id is unique: found is conclusive);
// the others replay; when no shard can be asked everything replays
// (counted): a row stored twice rather than one lost.
func TestReplaySkipsInFlightBatchesTheDestinationStored(t *testing.T) {
	refused := fmt.Errorf("connection refused")
	for _, tc := range []struct {
		name        string
		lookupErr   error // shard 0's
		shard1Err   error
		wantPorts   string
		wantStored  float64
		wantFailure float64
	}{
		{"stored on the second shard", nil, nil, "[7 8 9]", 3, 0},
		{"first shard fails, the second has the batch", refused, nil, "[7 8 9]", 3, 1},
		{"every lookup fails", refused, refused, "[4 5 6 7 8 9]", 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "tcp://127.0.0.1:0")
			cfg.Sinks.ClickHouse.Enabled = true // only its name is used here
			cfg.Sinks.JSONL.Enabled = false
			cfg.WAL.Enabled = true
			cfg.WAL.Dir = filepath.Join(t.TempDir(), "wal")
			if err := cfg.Finish(); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now().Add(-time.Minute)
			w1, err := newWALStage(cfg, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			cw := w1.wrap("clickhouse", &shardFinder{}, 0)
			var rows []*correlate.Record
			for i := 0; i < 10; i++ {
				w1.send(correlate.Input{Record: intraNode(i, t0), Exporter: "agent"}, func(in correlate.Input) {
					rows = append(rows, &correlate.Record{Record: in.Record, Seqs: []uint64{in.Seq}})
				})
			}
			// Batch 1 (rows 0-3) is committed; batch 2 (4-6) was in
			// flight and the second shard stored it; batch 3 (7-9)
			// was in flight and never arrived.
			if _, err := cw.Write(context.Background(), &sink.Batch{ID: 1, Records: rows[0:4]}); err != nil {
				t.Fatal(err)
			}
			for id, seqs := range map[uint64][]uint64{2: {5, 6, 7}, 3: {8, 9, 10}} {
				if err := w1.log.Intend(0, id, seqs); err != nil {
					t.Fatal(err)
				}
			}

			w2, err := newWALStage(cfg, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			defer w2.close()
			w2.lookupTimeout = 50 * time.Millisecond
			shard0 := &shardFinder{stored: map[uint64]uint64{}, err: tc.lookupErr}
			shard1 := &shardFinder{stored: map[uint64]uint64{2: 3, 1: 4}, err: tc.shard1Err}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{}, 2)
			var fan sink.Fanout
			var shards []*sink.Sink
			for _, f := range []*shardFinder{shard0, shard1} {
				s, err := sink.New(sink.Config{Name: "clickhouse", Writer: w2.wrap("clickhouse", f, 0), CommitInterval: 10 * time.Millisecond}, nil)
				if err != nil {
					t.Fatal(err)
				}
				shards = append(shards, s)
				go func() { _ = s.Run(ctx); done <- struct{}{} }()
			}
			fan = append(fan, shards[0]) // every replayed row to shard 0's sink
			main, err := correlate.New(correlateConfig(cfg), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := w2.replay(main, fan, correlateConfig(cfg)); err != nil {
				t.Fatal(err)
			}
			main.Flush(fan.Put)
			cancel()
			<-done
			<-done
			if shard0.asked == 0 || shard1.asked == 0 {
				t.Errorf("shards asked %d and %d times, want both", shard0.asked, shard1.asked)
			}
			var ports []int
			for _, r := range shard0.records() {
				ports = append(ports, int(r.Tuple.SrcPort)-1024)
			}
			slices.Sort(ports)
			if got := fmt.Sprint(ports); got != tc.wantPorts {
				t.Errorf("replayed connections %s, want %s", got, tc.wantPorts)
			}
			if got := counterOf(t, w2.alreadyStored); got != tc.wantStored {
				t.Errorf("rows already stored = %v, want %v", got, tc.wantStored)
			}
			if got := counterOf(t, w2.lookupFailures); got != tc.wantFailure {
				t.Errorf("lookup failures = %v, want %v", got, tc.wantFailure)
			}
			if st := w2.log.Stats(); st.Uncommitted != 0 {
				t.Errorf("%d records uncommitted after the replay", st.Uncommitted)
			}
		})
	}
}

func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// Intents that name their shard (wrapShard) are asked of that shard
// alone: a shard that is down leaves only its own batches uncertain
// (replayed, counted), while the healthy shard's stored batches are
// committed and its unstored ones replay; a batch without a shard (an
// older log) is asked of both and found on the healthy one.
func TestReplayAsksEachInFlightBatchOfItsShard(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.Sinks.ClickHouse.Enabled = true // only its name is used here
	cfg.Sinks.JSONL.Enabled = false
	cfg.WAL.Enabled = true
	cfg.WAL.Dir = filepath.Join(t.TempDir(), "wal")
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Minute)
	w1, err := newWALStage(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var rows []*correlate.Record
	for i := 0; i < 12; i++ {
		w1.send(correlate.Input{Record: intraNode(i, t0), Exporter: "agent"}, func(in correlate.Input) {
			rows = append(rows, &correlate.Record{Record: in.Record, Seqs: []uint64{in.Seq}})
		})
	}
	// The shard sinks log their intents through wrapShard; each write
	// is cut short by the crash before its commit (the writer blocks).
	crash := errors.New("crash before the commit")
	for _, tc := range []struct {
		shard int
		b     *sink.Batch
	}{
		{0, &sink.Batch{ID: 10, Records: rows[0:3]}}, // shard 0 stored it
		{0, &sink.Batch{ID: 11, Records: rows[3:6]}}, // shard 0 never got it
		{1, &sink.Batch{ID: 12, Records: rows[6:9]}}, // on the shard that is down
	} {
		cw := w1.wrapShard("clickhouse", &intentOnly{err: crash}, 0, tc.shard)
		if _, err := cw.Write(context.Background(), tc.b); err != crash {
			t.Fatalf("write batch %d: %v", tc.b.ID, err)
		}
	}
	// An older flowlens's intent, without a shard: stored on shard 0.
	if err := w1.log.Intend(0, 13, []uint64{10, 11, 12}); err != nil {
		t.Fatal(err)
	}

	w2, err := newWALStage(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer w2.close()
	w2.lookupTimeout = 100 * time.Millisecond
	shard0 := &shardFinder{stored: map[uint64]uint64{10: 3, 13: 3}}
	shard1 := &shardFinder{err: errors.New("connection refused")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	var shards []*sink.Sink
	for d, f := range []*shardFinder{shard0, shard1} {
		s, err := sink.New(sink.Config{Name: fmt.Sprintf("clickhouse-shard%d", d), Writer: w2.wrapShard("clickhouse", f, 0, d), CommitInterval: 10 * time.Millisecond}, nil)
		if err != nil {
			t.Fatal(err)
		}
		shards = append(shards, s)
		go func() { _ = s.Run(ctx); done <- struct{}{} }()
	}
	fan := sink.Fanout{shards[0]} // every replayed row to shard 0's sink
	main, err := correlate.New(correlateConfig(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.replay(main, fan, correlateConfig(cfg)); err != nil {
		t.Fatal(err)
	}
	main.Flush(fan.Put)
	cancel()
	<-done
	<-done
	if got, want := fmt.Sprint(shard0.askedIDs), "[10 11 13]"; got != want {
		t.Errorf("shard 0 asked about %s, want %s (its own batches and the one without a shard)", got, want)
	}
	if got, want := fmt.Sprint(shard1.askedIDs), "[12 13]"; got != want {
		t.Errorf("shard 1 asked about %s, want %s", got, want)
	}
	var ports []int
	for _, r := range shard0.records() {
		ports = append(ports, int(r.Tuple.SrcPort)-1024)
	}
	slices.Sort(ports)
	// 0-2 (batch 10) and 9-11 (batch 13) were stored; 3-5 were not,
	// 6-8 are uncertain (shard 1 down): those replay.
	if got, want := fmt.Sprint(ports), "[3 4 5 6 7 8]"; got != want {
		t.Errorf("replayed connections %s, want %s", got, want)
	}
	if got := counterOf(t, w2.alreadyStored); got != 6 {
		t.Errorf("rows already stored = %v, want 6", got)
	}
	if got := counterOf(t, w2.lookupFailures); got != 1 {
		t.Errorf("lookup failures = %v, want 1 (shard 1)", got)
	}
	if st := w2.log.Stats(); st.Uncommitted != 0 {
		t.Errorf("%d records uncommitted after the replay", st.Uncommitted)
	}
}

// intentOnly is a batchFinder writer whose Write fails (the crash): only
// the intent the committing writer logs first remains.
type intentOnly struct {
	shardFinder
	err error
}

func (w *intentOnly) Write(context.Context, *sink.Batch) (int, error) { return 0, w.err }
