package sink

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// fakeWriter fails the first failures calls (after delivering partial
// records of the batch) and records what it delivered.
type fakeWriter struct {
	mu       sync.Mutex
	failures int
	partial  int
	ids      []uint64
	got      []*correlate.Record
	closed   bool
}

func (f *fakeWriter) Write(_ context.Context, b *Batch) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, b.ID)
	if f.failures > 0 {
		f.failures--
		n := min(f.partial, len(b.Records))
		f.got = append(f.got, b.Records[:n]...)
		return n, errors.New("destination down")
	}
	f.got = append(f.got, b.Records...)
	return len(b.Records), nil
}

func (f *fakeWriter) Close() error { f.closed = true; return nil }

func (f *fakeWriter) delivered() []*correlate.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*correlate.Record(nil), f.got...)
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func records(n int) []*correlate.Record {
	out := make([]*correlate.Record, n)
	for i := range out {
		out[i] = &correlate.Record{}
		out[i].Tuple.SrcPort = uint16(i)
	}
	return out
}

func newSink(t *testing.T, w Writer, cfg Config) *Sink {
	t.Helper()
	cfg.Name, cfg.Writer = "test", w
	if cfg.RetryMin == 0 {
		cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runUntil(t *testing.T, s *Sink, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// start runs s until the test ends.
func start(t *testing.T, s *Sink) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestSinkDelivery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failures    int
		partial     int
		records     int
		wantRetries float64
	}{
		{"batch delivered at once", 0, 0, 5, 0},
		{"failed batch is retried with the same id until delivered", 3, 0, 5, 3},
		{"partly written batch retries only the rest", 1, 2, 5, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWriter{failures: tc.failures, partial: tc.partial}
			s := newSink(t, w, Config{MaxBatch: 10, CommitInterval: 5 * time.Millisecond})
			for _, r := range records(tc.records) {
				s.Put(r)
			}
			runUntil(t, s, func() bool { return len(w.delivered()) >= tc.records })
			got := w.delivered()
			if len(got) != tc.records {
				t.Fatalf("delivered %d records, want %d", len(got), tc.records)
			}
			for i, r := range got {
				if int(r.Tuple.SrcPort) != i {
					t.Fatalf("record %d delivered out of order or twice (port %d)", i, r.Tuple.SrcPort)
				}
			}
			for _, id := range w.ids {
				if id != w.ids[0] {
					t.Errorf("batch ids %v: a retry changed the id", w.ids)
				}
			}
			if got := counter(t, s.m.retries); got != tc.wantRetries {
				t.Errorf("retries = %v, want %v", got, tc.wantRetries)
			}
			if got := counter(t, s.m.written); got != float64(tc.records) {
				t.Errorf("written = %v, want %d", got, tc.records)
			}
			if !w.closed {
				t.Error("writer not closed on shutdown")
			}
		})
	}
}

func TestShutdownFlushesQueueAndCountsWhatItCannot(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failures    int
		spool       bool
		wantWritten int
		wantDropped float64
		wantParked  int
		// replay: a write-ahead log gives the sink its leftovers again.
		replay     bool
		wantReplay float64
	}{
		{"working destination gets everything", 0, false, 7, 0, 0, false, 0},
		{"dead destination: rest counted as dropped after flush timeout", 1 << 30, false, 0, 7, 0, false, 0},
		{"dead destination with a spool: rest parked after flush timeout", 1 << 30, true, 0, 0, 7, false, 0},
		{"dead destination with a write-ahead log: rest left for replay, not parked twice", 1 << 30, true, 0, 0, 0, true, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWriter{failures: tc.failures}
			cfg := Config{MaxBatch: 100, CommitInterval: time.Hour, FlushTimeout: 100 * time.Millisecond, LeaveForReplay: tc.replay}
			if tc.spool {
				cfg.Spool.Path = filepath.Join(t.TempDir(), "spool.jsonl")
			}
			s := newSink(t, w, cfg)
			for _, r := range records(7) {
				s.Put(r)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := s.Run(ctx); err != nil {
				t.Fatal(err)
			}
			if got := len(w.delivered()); got != tc.wantWritten {
				t.Errorf("delivered %d, want %d", got, tc.wantWritten)
			}
			if got := counter(t, s.m.dropped[dropShutdown]); got != tc.wantDropped {
				t.Errorf("dropped at shutdown = %v, want %v", got, tc.wantDropped)
			}
			if s.Len() != 0 {
				t.Errorf("queue holds %d after Run returned", s.Len())
			}
			if got := counter(t, s.m.parked); got != float64(tc.wantParked) {
				t.Errorf("parked = %v, want %d", got, tc.wantParked)
			}
			if got := counter(t, s.m.leftForReplay); got != tc.wantReplay {
				t.Errorf("left for replay = %v, want %v", got, tc.wantReplay)
			}
			if tc.spool && tc.replay {
				if _, err := os.Stat(cfg.Spool.Path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("spool %s exists (err %v): leftovers the log replays must not be parked too", cfg.Spool.Path, err)
				}
			} else if tc.spool {
				if n := len(spoolLines(t, cfg.Spool.Path)); n != tc.wantParked {
					t.Errorf("spool has %d lines, want %d", n, tc.wantParked)
				}
			}
		})
	}
}

func TestConfigValidationNamesTheField(t *testing.T) {
	w := &fakeWriter{}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Writer: w}, "name"},
		{Config{Name: "x"}, "writer"},
		{Config{Name: "x", Writer: w, QueueRecords: 10, MaxBatch: 20}, "maxBatch"},
		{Config{Name: "x", Writer: w, RetryMin: time.Minute, RetryMax: time.Second}, "retryMin"},
		{Config{Name: "x", Writer: w, CommitInterval: -1}, "commitInterval"},
		{Config{Name: "x", Writer: w, MaxBlock: -1}, "maxBlock"},
		{Config{Name: "x", Writer: w, UnhealthyAfter: -1}, "unhealthyAfter"},
		{Config{Name: "x", Writer: w, Spool: SpoolConfig{Path: "p", MaxBytes: -1}}, "spool.maxBytes"},
		{Config{Name: "x", Writer: w, Spool: SpoolConfig{Path: "p", FileMode: os.ModeDir | 0o600}}, "spool.fileMode"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := New(tc.cfg, nil)
			if err == nil || !contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
