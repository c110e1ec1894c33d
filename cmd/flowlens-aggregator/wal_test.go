package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
