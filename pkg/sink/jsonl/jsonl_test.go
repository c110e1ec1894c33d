package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
)

func rec(i int) *correlate.Record {
	r := &correlate.Record{Correlation: correlate.StatusCorrelated}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), uint16(i), 80, flow.ProtoTCP)
	r.Source.PodName = "client"
	r.FromSource = correlate.Side{Seen: true, Exporter: "node-a", Fwd: flow.Counters{Packets: 3}}
	r.L7.HTTPVals = `{"0":{"url":"/"}}`
	return r
}

func TestLinesAreValidJSONWithHTTPValsEmbedded(t *testing.T) {
	var out bytes.Buffer
	w, err := New(Config{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write(context.Background(), &sink.Batch{Records: []*correlate.Record{rec(1), rec(2)}}); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	sc := bufio.NewScanner(&out)
	lines := 0
	for sc.Scan() {
		lines++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if m["sourcePodName"] != "client" || m["correlation"] != "correlated" {
			t.Errorf("line %s lacks the record's fields", sc.Text())
		}
		if hv, ok := m["httpVals"].(map[string]any); !ok || hv["0"] == nil {
			t.Errorf("httpVals = %#v, want an embedded object", m["httpVals"])
		}
		if fs, ok := m["fromSourceNode"].(map[string]any); !ok || fs["packetTotalCount"] != 3.0 {
			t.Errorf("fromSourceNode = %#v", m["fromSourceNode"])
		}
		if _, ok := m["fromDestinationNode"]; ok {
			t.Errorf("unseen destination side should be omitted")
		}
	}
	if lines != 2 {
		t.Errorf("%d lines, want 2", lines)
	}
}

func TestFileRotatesBySize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.jsonl")
	one, _ := json.Marshal(toRow(rec(1)))
	lineLen := int64(len(one) + 1)
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
		if n, err := w.Write(context.Background(), &sink.Batch{Records: rs}); err != nil || n != len(rs) {
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
