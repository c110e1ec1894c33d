package wal

import (
	"fmt"
	"os"
	"testing"
)

// A batch intended and never committed (the crash came during its send)
// is named after a restart with the records still owed; committed batches,
// other sinks' batches and retries of one batch are told apart.
func TestIntentsNameTheBatchesInFlightAtACrash(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"clickhouse", "jsonl"}, Sync: SyncNever, SegmentBytes: 4096}
	l, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	seqs := appendN(t, l, 200) // several segments
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Batch 7 was sent and committed: nothing to ask about.
	must(l.Intend(0, 7, seqs[0:10]))
	must(l.Commit(0, seqs[0:10]))
	// Batch 8 was sent twice (a retry), unordered, and not committed.
	must(l.Intend(0, 8, []uint64{seqs[12], seqs[10], seqs[11]}))
	must(l.Intend(0, 8, []uint64{seqs[10], seqs[11], seqs[12], seqs[13]}))
	// Batch 9 was committed in part before the crash (a commit of an
	// earlier row of the same connection cannot name it, but the log
	// must not care how).
	must(l.Intend(0, 9, seqs[150:160]))
	must(l.Commit(0, seqs[150:155]))
	// Another sink's batch.
	must(l.Intend(1, 9, seqs[0:3]))
	// The crash: the log is dropped without Close (the file descriptors
	// leak for the test's life, as a killed process's would).

	l2 := open(t, cfg)
	got := l2.Intents(0)
	want := []Intent{
		{Sink: 0, Batch: 8, Seqs: seqs[10:14]},
		{Sink: 0, Batch: 9, Seqs: seqs[155:160]},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Intents(0) = %v, want %v", got, want)
	}
	if again := l2.Intents(0); len(again) != 0 {
		t.Errorf("Intents(0) a second time = %v, want none (handed out once)", again)
	}
	if got := fmt.Sprint(l2.Intents(1)); got != fmt.Sprint([]Intent{{Sink: 1, Batch: 9, Seqs: seqs[0:3]}}) {
		t.Errorf("Intents(1) = %s", got)
	}

	// Committing what the destination had keeps the replay from
	// passing it to that sink; the other sink still gets it.
	must(l2.Commit(0, seqs[10:14]))
	for _, r := range replayAll(t, l2) {
		if r.seq >= seqs[10] && r.seq <= seqs[13] && r.need != 2 {
			t.Errorf("record %d replayed with need %b after clickhouse committed it, want jsonl only", r.seq, r.need)
		}
	}
	must(l2.Close())
	l3 := open(t, cfg)
	if got := l3.Intents(0); fmt.Sprint(got) != fmt.Sprint([]Intent{{Sink: 0, Batch: 9, Seqs: seqs[155:160]}}) {
		t.Errorf("after the settling commit and a restart, Intents(0) = %v, want only batch 9's rest", got)
	}
}

// An intent frame cut by the crash is a torn tail like any other: the
// batch is not named and its records replay.
func TestTornIntentIsIgnored(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Sinks: []string{"clickhouse"}, Sync: SyncNever}
	l, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	seqs := appendN(t, l, 5)
	if err := l.Intend(0, 42, seqs); err != nil {
		t.Fatal(err)
	}
	files := segmentFiles(t, dir)
	last := files[len(files)-1]
	fi, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(last, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	l2 := open(t, cfg)
	if got := l2.Intents(0); len(got) != 0 {
		t.Errorf("Intents = %v from a torn intent frame, want none", got)
	}
	if got := len(replayAll(t, l2)); got != 5 {
		t.Errorf("replayed %d records, want 5", got)
	}
}

func TestIntentFrameRoundTrip(t *testing.T) {
	for _, dest := range []int{-1, 0, 3} {
		b := appendIntentFrame(nil, "clickhouse", dest, 1<<63|5, []uint64{3, 4, 1000})
		var f frame
		if err := parseFrame(b, &f); err != nil {
			t.Fatal(err)
		}
		if f.typ != typeIntent || f.sink != "clickhouse" || f.batch != 1<<63|5 || fmt.Sprint(f.seqs) != "[3 4 1000]" || f.size != len(b) || f.dest != dest {
			t.Errorf("dest %d: parsed %+v", dest, f)
		}
		for n := range len(b) {
			if err := parseFrame(b[:n], &f); err == nil {
				t.Errorf("dest %d: a frame cut to %d of %d bytes parsed", dest, n, len(b))
			}
		}
	}
}

// The destination is a trailing field: an intent frame without it (an
// older flowlens) reads as "not recorded", and one with it is the older
// frame plus bytes an older reader leaves alone (it stops after the
// numbers), so logs stay readable both ways.
func TestIntentDestinationIsATrailingOptionalField(t *testing.T) {
	old := appendIntentFrame(nil, "clickhouse", -1, 9, []uint64{1, 2})
	withDest := appendIntentFrame(nil, "clickhouse", 2, 9, []uint64{1, 2})
	if got, want := withDest[frameHeader:len(withDest)-1], old[frameHeader:]; string(got) != string(want) {
		t.Errorf("frame with a destination is not the older frame plus a trailing field:\n%x\n%x", got, want)
	}
	var f frame
	if err := parseFrame(old, &f); err != nil || f.dest != -1 {
		t.Errorf("older frame: dest %d, %v; want -1 (not recorded)", f.dest, err)
	}
}

// IntendTo's destination comes back from Intents after a restart; an
// Intend without one (as an older flowlens wrote) comes back without.
func TestIntentsNameTheirDestination(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), Sinks: []string{"clickhouse"}, Sync: SyncNever}
	l, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	seqs := appendN(t, l, 9)
	for _, err := range []error{
		l.IntendTo(0, 1, 10, seqs[0:3]),
		l.IntendTo(0, 0, 11, seqs[3:5]),
		l.Intend(0, 12, seqs[5:7]),
		// A retry of batch 10 to the same shard keeps the shard.
		l.IntendTo(0, 1, 10, seqs[0:3]),
		l.IntendTo(0, -1, 13, seqs[7:9]),
	} {
		if err != nil && err.Error() != "wal intent: destination -1" {
			t.Fatal(err)
		}
	}
	l2 := open(t, cfg)
	got := fmt.Sprint(l2.Intents(0))
	want := fmt.Sprint([]Intent{
		{Sink: 0, Batch: 10, Seqs: seqs[0:3], Dest: 1, HasDest: true},
		{Sink: 0, Batch: 11, Seqs: seqs[3:5], Dest: 0, HasDest: true},
		{Sink: 0, Batch: 12, Seqs: seqs[5:7]},
	})
	if got != want {
		t.Errorf("Intents = %s, want %s", got, want)
	}
}
