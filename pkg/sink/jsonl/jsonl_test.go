package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/sinktest"
)

var rec = sinktest.Record

// Each line holds exactly the column table's values for its record: the
// same names and types as the ClickHouse columns, nothing nested.
func TestLinesAreTheColumnTablesRows(t *testing.T) {
	var out bytes.Buffer
	w, err := New(Config{Stdout: &out, Aggregator: "agg-1"})
	if err != nil {
		t.Fatal(err)
	}
	recs := []*correlate.Record{rec(1), rec(2)}
	if n, err := w.Write(context.Background(), &sink.Batch{ID: 99, Records: recs}); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	sc := bufio.NewScanner(&out)
	i := 0
	for sc.Scan() {
		got, err := sink.ParseJSONRow(sc.Bytes())
		if err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		want := sink.RowOf(recs[i], &sink.Meta{Aggregator: "agg-1", BatchID: 99})
		if d := got.Diff(&want); len(d) > 0 {
			t.Errorf("line %d differs from the column table: %v", i, d)
		}
		for _, c := range sink.ColumnNames() {
			if !got.Has(c) {
				t.Errorf("line %d lacks column %s", i, c)
			}
		}
		if got.Str("destinationClusterIP") != "10.96.0.1" || got.Num("packetTotalCountFromSourceNode") != 21 {
			t.Errorf("line %d: destinationClusterIP %q, packetTotalCountFromSourceNode %d", i,
				got.Str("destinationClusterIP"), got.Num("packetTotalCountFromSourceNode"))
		}
		i++
	}
	if i != 2 {
		t.Errorf("%d lines, want 2", i)
	}
}

func TestFileRotatesBySize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.jsonl")
	// Lines differ in length by a few digits (the connection key), far
	// less than a third: three of the longest fit a file, four never do.
	var lineLen int64
	for i := 0; i < 10; i++ {
		lineLen = max(lineLen, int64(len(sink.AppendJSON(nil, rec(i), &sink.Meta{BatchID: 1}))+1))
	}
	w, err := New(Config{Path: path, MaxBytes: 3 * lineLen, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 4; i++ {
		// 10 lines in batches of 3 (the last of 1).
		var rs []*correlate.Record
		for j := 0; j < 3 && i*3+j < 10; j++ {
			rs = append(rs, rec(i*3+j))
		}
		if n, err := w.Write(context.Background(), &sink.Batch{ID: 1, Records: rs}); err != nil || n != len(rs) {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	for _, tc := range []struct {
		file  string
		lines int
	}{{"flows.jsonl", 1}, {"flows.jsonl.1", 3}, {"flows.jsonl.2", 3}} {
		b, err := os.ReadFile(filepath.Join(dir, tc.file))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if got := bytes.Count(b, []byte("\n")); got != tc.lines {
			t.Errorf("%s has %d lines, want %d", tc.file, got, tc.lines)
		}
		if int64(len(b)) > 3*lineLen {
			t.Errorf("%s is %d bytes, over the %d limit", tc.file, len(b), 3*lineLen)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "flows.jsonl.3")); err == nil {
		t.Error("more old files kept than MaxFiles")
	}
}

// The files hold URLs, hosts and pod names: owner-only by default, on
// start and on every rotation, whatever the umask; a configured mode is
// honoured.
func TestFilesAreCreatedOwnerOnly(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	lineLen := int64(len(sink.AppendJSON(nil, rec(1), &sink.Meta{BatchID: 1})) + 1)
	for _, tc := range []struct {
		name string
		mode os.FileMode
		want os.FileMode
	}{{"default", 0, 0o600}, {"configured", 0o640, 0o640}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "flows.jsonl")
			w, err := New(Config{Path: path, MaxBytes: 2 * lineLen, MaxFiles: 2, FileMode: tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			for i := range 5 {
				if _, err := w.Write(context.Background(), &sink.Batch{ID: 1, Records: []*correlate.Record{rec(i)}}); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range []string{"flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"} {
				st, err := os.Stat(filepath.Join(dir, f))
				if err != nil {
					t.Fatalf("%s: %v (no rotation?)", f, err)
				}
				if st.Mode().Perm() != tc.want {
					t.Errorf("%s has mode %v, want %v", f, st.Mode().Perm(), tc.want)
				}
			}
		})
	}
	if _, err := New(Config{Path: "x", FileMode: os.ModeSetuid | 0o600}); err == nil {
		t.Error("a fileMode with more than permission bits was accepted")
	}
}
