package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type replayed struct {
	seq  uint64
	need uint8
	data string
}

func open(t *testing.T, cfg Config) *Log {
	t.Helper()
	l, err := Open(cfg, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func replayAll(t *testing.T, l *Log) []replayed {
	t.Helper()
	var out []replayed
	if err := l.Replay(func(seq uint64, need uint8, data []byte) error {
		out = append(out, replayed{seq, need, string(data)})
		return nil
	}); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	return out
}

func payload(i int) []byte { return []byte(fmt.Sprintf("record-%04d-%s", i, strings.Repeat("x", i%7))) }

func appendN(t *testing.T, l *Log, n int) []uint64 {
	t.Helper()
	seqs := make([]uint64, n)
	for i := range seqs {
		s, err := l.Append(payload(i))
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		seqs[i] = s
	}
	return seqs
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A restarted log hands back, in order and intact, exactly the records some
// sink had not committed, each with the sinks still owed it.
func TestReplayReturnsWhatEachSinkHasNotCommitted(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"clickhouse", "jsonl"}, Sync: SyncNever}
	l := open(t, cfg)
	seqs := appendN(t, l, 100)
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("seq %d = %d, want %d", i, s, i+1)
		}
	}
	var even, firstHalf []uint64
	for _, s := range seqs {
		if s%2 == 0 {
			even = append(even, s)
		}
		if s <= 50 {
			firstHalf = append(firstHalf, s)
		}
	}
	if err := l.Commit(0, even); err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(1, firstHalf); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l2 := open(t, cfg)
	got := replayAll(t, l2)
	var want []replayed
	for i, s := range seqs {
		var need uint8
		if s%2 == 1 {
			need |= 1
		}
		if s > 50 {
			need |= 2
		}
		if need != 0 {
			want = append(want, replayed{s, need, string(payload(i))})
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replayed %d records:\n%v\nwant %d:\n%v", len(got), got, len(want), want)
	}
	if s, _ := l2.Append([]byte("next")); s != 101 {
		t.Errorf("first append after restart got seq %d, want 101 (numbers continue)", s)
	}
}

func TestCleanShutdownLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"a", "b"}}
	l := open(t, cfg)
	seqs := appendN(t, l, 50)
	for i := range 2 {
		if err := l.Commit(i, seqs); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if f := segmentFiles(t, dir); len(f) != 0 {
		t.Errorf("segments left after every record was committed: %v", f)
	}
	if got := replayAll(t, open(t, cfg)); len(got) != 0 {
		t.Errorf("replayed %d records after a clean shutdown", len(got))
	}
}

// Records of a sink dropped from the configuration no longer wait for it,
// and commits naming it are ignored.
func TestRemovedSinkNoLongerHoldsRecords(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, Sinks: []string{"a", "b"}})
	seqs := appendN(t, l, 10)
	if err := l.Commit(0, seqs[:6]); err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(1, seqs); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	got := replayAll(t, open(t, Config{Dir: dir, Sinks: []string{"a"}}))
	if len(got) != 4 || got[0].seq != 7 || got[0].need != 1 {
		t.Errorf("with sink b gone, replayed %v; want seqs 7-10 for sink a only", got)
	}
}

func TestTrimRemovesSegmentsOnceEverySinkCommitted(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, Sinks: []string{"a", "b"}, SegmentBytes: 4096, Sync: SyncNever})
	seqs := appendN(t, l, 400) // ~12 KiB: several segments
	before := len(segmentFiles(t, dir))
	if before < 3 {
		t.Fatalf("only %d segments for 400 records of 4 KiB segments", before)
	}
	// One sink alone removes nothing.
	if err := l.Commit(0, seqs[:300]); err != nil {
		t.Fatal(err)
	}
	if n := len(segmentFiles(t, dir)); n != before {
		t.Errorf("%d segments after one of two sinks committed, want %d", n, before)
	}
	if err := l.Commit(1, seqs[:300]); err != nil {
		t.Fatal(err)
	}
	after := len(segmentFiles(t, dir))
	if after >= before {
		t.Fatalf("%d segments after both sinks committed 3/4 of the records, want fewer than %d", after, before)
	}
	if st := l.Stats(); st.Uncommitted != 100 || st.Segments != after {
		t.Errorf("stats %+v, want 100 uncommitted in %d segments", st, after)
	}
	_ = l.Close()
	got := replayAll(t, open(t, Config{Dir: dir, Sinks: []string{"a", "b"}, SegmentBytes: 4096}))
	if len(got) != 100 || got[0].seq != 301 || got[99].seq != 400 {
		t.Errorf("replayed %d records (%v...), want seqs 301-400", len(got), got[:min(len(got), 1)])
	}
}

func TestOverMaxBytesOldestSegmentsGoAndAreCounted(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"a"}, SegmentBytes: 4096, MaxBytes: 3 * 4096, Sync: SyncNever}
	l := open(t, cfg)
	const n = 2000
	appendN(t, l, n)
	st := l.Stats()
	if st.Bytes > cfg.MaxBytes {
		t.Errorf("log holds %d bytes, bound %d", st.Bytes, cfg.MaxBytes)
	}
	dropped := counterValue(t, l.m.droppedBound)
	if dropped == 0 || int(dropped)+st.Uncommitted != n {
		t.Errorf("dropped %v + held %d != %d appended", dropped, st.Uncommitted, n)
	}
	_ = l.Close()
	got := replayAll(t, open(t, cfg))
	if len(got) != st.Uncommitted || got[len(got)-1].seq != n {
		t.Errorf("replayed %d records ending at %d, want the newest %d ending at %d", len(got), got[len(got)-1].seq, st.Uncommitted, n)
	}
}

// A crash in the middle of a write leaves part of a frame: it is detected by
// the checksum, counted, and cut off, and the records before it are intact.
func TestTornTailIsDetectedTruncatedAndCounted(t *testing.T) {
	for _, cut := range []int{1, 5, 9, 20} {
		t.Run(fmt.Sprintf("last frame missing %d bytes", cut), func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, Sinks: []string{"a"}}
			l := open(t, cfg)
			appendN(t, l, 10)
			_ = l.Close()
			files := segmentFiles(t, dir)
			if len(files) != 1 {
				t.Fatalf("segments %v, want 1", files)
			}
			fi, _ := os.Stat(files[0])
			if err := os.Truncate(files[0], fi.Size()-int64(cut)); err != nil {
				t.Fatal(err)
			}
			l2 := open(t, cfg)
			got := replayAll(t, l2)
			if len(got) != 9 || got[8].data != string(payload(8)) {
				t.Fatalf("replayed %v, want the 9 whole records", got)
			}
			if v := counterValue(t, l2.m.tornTails); v != 1 {
				t.Errorf("torn tails counted %v, want 1", v)
			}
			fi2, _ := os.Stat(files[0])
			if fi2.Size() >= fi.Size()-int64(cut) {
				t.Errorf("torn segment not truncated: %d bytes", fi2.Size())
			}
			// The truncated file reads clean the next time, and the next
			// record takes the torn one's number (it was never handed on).
			s, err := l2.Append([]byte("after"))
			if err != nil || s != 10 {
				t.Errorf("append after torn tail: seq %d err %v, want 10", s, err)
			}
			_ = l2.Close()
			l3 := open(t, cfg)
			if got := replayAll(t, l3); len(got) != 10 || got[9].data != "after" {
				t.Errorf("after restart replayed %d records, want 10 ending with the new one", len(got))
			}
			if v := counterValue(t, l3.m.tornTails); v != 0 {
				t.Errorf("torn tail counted again after truncation: %v", v)
			}
		})
	}
}

func TestCorruptBytesAreSkippedAndCounted(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   func(b []byte) int // offset of the byte to damage
	}{
		{"payload byte", func(b []byte) int { return bytes.Index(b, payload(4)) + 3 }},
		{"length field", func(b []byte) int { return bytes.Index(b, payload(4)) - 9 - 8 }},
		{"checksum field", func(b []byte) int { return bytes.Index(b, payload(4)) - 9 - 4 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, Sinks: []string{"a"}}
			l := open(t, cfg)
			appendN(t, l, 10)
			_ = l.Close()
			f := segmentFiles(t, dir)[0]
			b, _ := os.ReadFile(f)
			b[tc.at(b)] ^= 0xff
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			l2 := open(t, cfg)
			got := replayAll(t, l2)
			var seqs []uint64
			for _, r := range got {
				seqs = append(seqs, r.seq)
				if r.data != string(payload(int(r.seq-1))) {
					t.Errorf("record %d replayed as %q", r.seq, r.data)
				}
			}
			if fmt.Sprint(seqs) != "[1 2 3 4 6 7 8 9 10]" {
				t.Errorf("replayed seqs %v, want all but the damaged 5th", seqs)
			}
			if v := counterValue(t, l2.m.droppedCorr); v != 1 {
				t.Errorf("corrupt records counted %v, want 1", v)
			}
			if v := counterValue(t, l2.m.corruptBytes); v == 0 {
				t.Error("corrupt bytes not counted")
			}
		})
	}
}

// Garbage in the directory never panics Open and never yields a record.
func FuzzScanNeverPanics(f *testing.F) {
	good := appendRecordFrame(nil, 1, []byte("abc"))
	good = appendCommitFrame(good, "a", []uint64{1, 5, 9})
	f.Add(good)
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var last uint64
		scan(append(segmentMagic[:len(segmentMagic):len(segmentMagic)], b...), len(segmentMagic), func(fr *frame) {
			if fr.typ == typeRecord && fr.seq <= last {
				t.Fatalf("record %d after %d", fr.seq, last)
			}
			if fr.typ == typeRecord {
				last = fr.seq
			}
		})
	})
}

func TestReplayLeavesOutRecordsAppendedAfterOpen(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"a"}, SegmentBytes: 4096}
	l := open(t, cfg)
	appendN(t, l, 5)
	_ = l.Close()
	l2 := open(t, cfg)
	appendN(t, l2, 500) // rotates several times
	if got := replayAll(t, l2); len(got) != 5 {
		t.Errorf("replayed %d records, want the 5 from before Open", len(got))
	}
}

func TestFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l := open(t, Config{Dir: dir, Sinks: []string{"a"}})
	appendN(t, l, 1)
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	for _, f := range segmentFiles(t, dir) {
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

func TestSyncPolicies(t *testing.T) {
	for _, p := range []SyncPolicy{SyncAlways, SyncInterval, SyncNever} {
		t.Run(string(p), func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, Sinks: []string{"a"}, Sync: p, SyncInterval: 20 * time.Millisecond}
			l := open(t, cfg)
			seqs := appendN(t, l, 20)
			if err := l.Commit(0, seqs[:10]); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(2 * time.Second)
			var n uint64
			for {
				n = histCount(t, l)
				if p == SyncNever || n > 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			switch {
			case p == SyncNever && n != 0:
				t.Errorf("%d fsyncs with sync never", n)
			case p == SyncAlways && n < 21:
				t.Errorf("%d fsyncs for 20 appends and a commit with sync always", n)
			case p == SyncInterval && n == 0:
				t.Errorf("no fsync within 2s with a 20ms interval")
			}
			_ = l.Close()
			if got := replayAll(t, open(t, cfg)); len(got) != 10 {
				t.Errorf("replayed %d, want 10", len(got))
			}
		})
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "dir"},
		{Config{Dir: "x", SegmentBytes: 10}, "segmentBytes"},
		{Config{Dir: "x", SegmentBytes: 1 << 20, MaxBytes: 1 << 20}, "maxBytes"},
		{Config{Dir: "x", Sync: "sometimes"}, "sync"},
		{Config{Dir: "x", SyncInterval: -1}, "syncInterval"},
		{Config{Dir: "x", Sinks: []string{"a", "a"}}, "sinks[1]"},
	} {
		_, err := Open(tc.cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%+v) error %v, want one naming %s", tc.cfg, err, tc.want)
		}
	}
}

func TestOperationsAfterCloseFail(t *testing.T) {
	l := open(t, Config{Dir: t.TempDir(), Sinks: []string{"a"}})
	_ = l.Close()
	if _, err := l.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if err := l.Commit(0, []uint64{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close: %v", err)
	}
}

func histCount(t *testing.T, l *Log) uint64 {
	t.Helper()
	var m dto.Metric
	if err := l.m.syncDurations.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// Appends, commits from two sinks, fsyncs, rotation and trimming run at
// once (the aggregator's collectors, sink goroutines and sync loop); run
// with -race. Everything committed leaves nothing behind.
func TestConcurrentAppendCommitAndSync(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, Sinks: []string{"a", "b"}, SegmentBytes: 4096, Sync: SyncInterval, SyncInterval: time.Millisecond})
	const n = 3000
	seqs := make(chan uint64, n)
	errs := make(chan error, 3)
	go func() {
		for i := 0; i < n; i++ {
			s, err := l.Append(payload(i))
			if err != nil {
				errs <- err
				return
			}
			seqs <- s
		}
		close(seqs)
		errs <- nil
	}()
	fan := [2]chan uint64{make(chan uint64, n), make(chan uint64, n)}
	go func() {
		for s := range seqs {
			fan[0] <- s
			fan[1] <- s
		}
		close(fan[0])
		close(fan[1])
	}()
	for sink := range 2 {
		go func() {
			var batch []uint64
			for s := range fan[sink] {
				if batch = append(batch, s); len(batch) == 37 {
					if err := l.Commit(sink, batch); err != nil {
						errs <- err
						return
					}
					batch = batch[:0]
				}
			}
			errs <- l.Commit(sink, batch)
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if st := l.Stats(); st.Uncommitted != 0 || st.NextSeq != n+1 {
		t.Errorf("stats %+v, want nothing uncommitted and next seq %d", st, n+1)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if f := segmentFiles(t, dir); len(f) != 0 {
		t.Errorf("segments left: %v", f)
	}
}
