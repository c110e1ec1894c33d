package theia

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExpand(t *testing.T) {
	q := Query{From: time.Unix(1700000000, 0), To: time.Unix(1700003600, 0), Interval: 30 * time.Second}
	for _, tc := range []struct{ in, want, err string }{
		{in: "SELECT 1 WHERE $__timeFilter(flowEndSeconds)",
			want: "SELECT 1 WHERE flowEndSeconds >= toDateTime(1700000000) AND flowEndSeconds <= toDateTime(1700003600)"},
		{in: "SELECT $__timeInterval(flowEndSeconds) as time, SUM(x)*8000/$__interval_ms FROM t WHERE $__timeFilter(time)",
			want: "SELECT toStartOfInterval(toDateTime(flowEndSeconds), INTERVAL 30 second) as time, SUM(x)*8000/30000 FROM t " +
				"WHERE time >= toDateTime(1700000000) AND time <= toDateTime(1700003600)"},
		{in: "SELECT 1 WHERE a = $cluster", err: "unknown macro or variable at \"$cluster\""},
		{in: "SELECT $__timeGroup(t, '5m')", err: "unknown macro"},
	} {
		got, err := Expand(tc.in, q)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Expand(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Expand(%q)\n got %q, %v\nwant %q", tc.in, got, err, tc.want)
		}
	}
	// The data source never uses an interval under a second.
	got, err := Expand("$__timeInterval(c)", Query{Interval: 100 * time.Millisecond})
	if err != nil || got != "toStartOfInterval(toDateTime(c), INTERVAL 1 second)" {
		t.Errorf("sub-second interval: %q, %v", got, err)
	}
}

// Every stored panel expands completely: the testdata holds only macros
// Expand knows, and every dashboard has the panels the integration test
// checks.
func TestTestdataPanelsExpand(t *testing.T) {
	want := map[string]int{"flow_records_dashboard.sql": 3, "pod_to_pod_dashboard.sql": 8, "node_to_node_dashboard.sql": 8}
	for file, n := range want {
		ps, err := LoadPanels(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != n {
			t.Errorf("%s: %d panels, want %d", file, len(ps), n)
		}
		for _, p := range ps {
			sql, err := Expand(p.SQL, Query{From: time.Unix(1, 0), To: time.Unix(2, 0), Interval: time.Minute})
			if err != nil {
				t.Errorf("%s: %s: %v", file, p.Name, err)
			}
			if !strings.HasPrefix(strings.ToUpper(sql), "SELECT") {
				t.Errorf("%s: %s: not a SELECT: %q", file, p.Name, sql)
			}
		}
	}
}

func TestExpandWithAnotherStartOfInterval(t *testing.T) {
	q := Query{Interval: time.Minute, StartOfInterval: StartOfIntervalFor18}
	got, err := Expand("SELECT $__timeInterval(flowEndSeconds) as time", q)
	if want := "SELECT toDateTime(intDiv(toUInt32(toDateTime(flowEndSeconds)), 60) * 60) as time"; err != nil || got != want {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
}
