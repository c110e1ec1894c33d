package sink

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// rejectingWriter rejects every batch with err while reject is set.
type rejectingWriter struct {
	mu     sync.Mutex
	reject bool
	err    error
	got    int
	ids    []uint64
}

func (w *rejectingWriter) Write(_ context.Context, b *Batch) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ids = append(w.ids, b.ID)
	if w.reject {
		return 0, w.err
	}
	w.got += len(b.Records)
	return len(b.Records), nil
}

func (w *rejectingWriter) Close() error { return nil }

func (w *rejectingWriter) set(reject bool) {
	w.mu.Lock()
	w.reject = reject
	w.mu.Unlock()
}

func (w *rejectingWriter) delivered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got
}

func spoolLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

func TestPermanentErrorParksBatchesInTheSpoolAndFailsHealth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.jsonl")
	w := &rejectingWriter{reject: true, err: Permanent(errors.New("column httpVals is UInt64"))}
	s := newSink(t, w, Config{MaxBatch: 3, CommitInterval: time.Millisecond,
		Spool: SpoolConfig{Path: path, Aggregator: "agg-1"}})
	recs := records(7)
	for _, r := range recs {
		s.Put(r)
	}
	start(t, s)
	waitFor(t, func() bool { return counter(t, s.m.parked) >= 7 })
	if got := counter(t, s.m.parked); got != 7 {
		t.Fatalf("parked = %v, want 7", got)
	}
	if got := counter(t, s.m.retries); got != 0 {
		t.Errorf("a permanent error was retried %v times", got)
	}
	if s.Len() != 0 {
		t.Errorf("queue still holds %d: parked batches must leave it", s.Len())
	}
	err := s.Healthy()
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), path) {
		t.Errorf("Healthy after a permanent error = %v, want a permanent error naming the spool", err)
	}
	st, statErr := os.Stat(path)
	if statErr != nil {
		t.Fatal(statErr)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("spool mode %v, want 0600", st.Mode().Perm())
	}
	// Each parked line is the record's row, with the batch that failed.
	lines := spoolLines(t, path)
	if len(lines) != 7 {
		t.Fatalf("spool has %d lines, want 7", len(lines))
	}
	for i, line := range lines {
		got, err := ParseJSONRow([]byte(line))
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		want := RowOf(recs[i], &Meta{Aggregator: "agg-1", BatchID: got.Num("batchId")})
		if d := got.Diff(&want); len(d) > 0 {
			t.Errorf("line %d differs from its record: %v", i, d)
		}
		if got.Num("batchId") != w.ids[i/3] {
			t.Errorf("line %d batchId %d, want the failed batch's %d", i, got.Num("batchId"), w.ids[i/3])
		}
	}

	// The destination takes records again: health recovers.
	w.set(false)
	s.Put(&correlate.Record{})
	waitFor(t, func() bool { return w.delivered() == 1 })
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy after a successful write: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSpoolBoundDropsAndCountsTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.jsonl")
	one := len(AppendJSON(nil, records(1)[0], &Meta{BatchID: 1<<63 + 1})) + 1
	w := &rejectingWriter{reject: true, err: Permanent(errors.New("rejected"))}
	// Room for two lines (batch ids are at most as long as 1<<63+1).
	s := newSink(t, w, Config{MaxBatch: 5, CommitInterval: time.Millisecond, Spool: SpoolConfig{Path: path, MaxBytes: int64(2*one + one/2)}})
	for _, r := range records(5) {
		s.Put(r)
	}
	runUntil(t, s, func() bool {
		return counter(t, s.m.parked)+counter(t, s.m.dropped[dropSpoolFull]) >= 5
	})
	if p, d := counter(t, s.m.parked), counter(t, s.m.dropped[dropSpoolFull]); p != 2 || d != 3 {
		t.Errorf("parked %v, dropped{spool_full} %v; want 2 and 3", p, d)
	}
	if n := len(spoolLines(t, path)); n != 2 {
		t.Errorf("spool has %d lines, want 2", n)
	}
}

func TestPermanentErrorWithoutSpoolDropsAndCounts(t *testing.T) {
	w := &rejectingWriter{reject: true, err: fmt.Errorf("insert: %w", Permanent(errors.New("rejected")))}
	s := newSink(t, w, Config{MaxBatch: 5, CommitInterval: time.Millisecond})
	for _, r := range records(4) {
		s.Put(r)
	}
	runUntil(t, s, func() bool { return counter(t, s.m.dropped[dropPermanent]) >= 4 })
	if got := counter(t, s.m.dropped[dropPermanent]); got != 4 {
		t.Errorf("dropped{permanent_error} = %v, want 4", got)
	}
}

func TestRetryableFailuresFailHealthOnlyAfterUnhealthyAfter(t *testing.T) {
	w := &rejectingWriter{reject: true, err: errors.New("connection refused")}
	s := newSink(t, w, Config{MaxBatch: 1, CommitInterval: time.Millisecond, UnhealthyAfter: 200 * time.Millisecond})
	s.Put(&correlate.Record{})
	start(t, s)
	// Registered after start, so it runs first: the shutdown flush then
	// delivers at once.
	t.Cleanup(func() { w.set(false) })
	deadline := time.Now().Add(5 * time.Second)
	for s.FailingSince().IsZero() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s.FailingSince().IsZero() {
		t.Fatal("FailingSince not set while writes fail")
	}
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy %s into an outage: %v; want ok until unhealthyAfter", time.Since(s.FailingSince()), err)
	}
	time.Sleep(250 * time.Millisecond)
	if err := s.Healthy(); err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Healthy after unhealthyAfter = %v, want the write error", err)
	}
	if err := (Fanout{s}).Healthy(); err == nil {
		t.Error("Fanout.Healthy ok while a sink is failing")
	}
}

func TestSinksOfOneProcessRegisterSideBySide(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, name := range []string{"clickhouse", "jsonl"} {
		if _, err := New(Config{Name: name, Writer: &fakeWriter{}}, reg); err != nil {
			t.Fatalf("sink %s: %v", name, err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sinks := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "flowlens_aggregator_sink_records_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "sink" {
					sinks[l.GetValue()] = true
				}
			}
		}
	}
	if !sinks["clickhouse"] || !sinks["jsonl"] {
		t.Errorf("dropped counter series for sinks %v, want clickhouse and jsonl", sinks)
	}
	if _, err := New(Config{Name: "jsonl", Writer: &fakeWriter{}}, reg); err == nil {
		t.Error("a second sink of the same name registered its metrics")
	}
}
