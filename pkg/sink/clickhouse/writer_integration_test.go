//go:build integration

package clickhouse

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
	"github.com/flowlens/flowlens/pkg/sink/sinktest"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

var testRecord = sinktest.Record

func query(t *testing.T, s *clickhousetest.Server, q string) string {
	t.Helper()
	out, err := s.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func newWriter(t *testing.T, s *clickhousetest.Server, table string) *Writer {
	t.Helper()
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Table: table})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// readTable reads every output column of table back through ScanRow, in
// batch and port order.
func readTable(t *testing.T, s *clickhousetest.Server, table string) []sink.Row {
	t.Helper()
	conn, err := ch.Open(&ch.Options{Addr: []string{s.Addr}, Auth: ch.Auth{Database: "default", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.Query(context.Background(), SelectSQL("default", table, "ORDER BY batchId, sourceTransportPort"))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []sink.Row
	for rows.Next() {
		r, err := ScanRow(rows)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriterCreatesSchemaAndInsertsRows(t *testing.T) {
	s := clickhousetest.Start(t)
	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs := []*correlate.Record{testRecord(0), testRecord(1), testRecord(2)}
	if n, err := w.Write(ctx, &sink.Batch{ID: 42, Records: recs}); err != nil || n != 3 {
		t.Fatalf("Write = %d, %v; want 3, nil", n, err)
	}
	if v := w.Version(); v.Major != 18 && !v.AtLeast(19, 0) {
		t.Errorf("server version %v not recorded", v)
	}
	if got := query(t, s, "SELECT count(), uniqExact(sourceTransportPort) FROM flows WHERE batchId = 42 AND aggregator = 'agg-1'"); got != "3\t3" {
		t.Errorf("rows = %q, want 3 distinct rows", got)
	}
	got := query(t, s, "SELECT sourcePodName, destinationPodName, destinationNodeName, appProtocolName, dnsQueryName, correlation, packetTotalCountFromDestinationNode, flowStartSeconds FROM flows ORDER BY sourceTransportPort LIMIT 1")
	want := "client\tweb\tnode-b\thttp\tq.example\tcorrelated\t31\t2023-11-14 22:13:20"
	if got != want {
		t.Errorf("row = %q, want %q", got, want)
	}
	// A retry of a batch that was stored is not stored twice.
	if n, err := w.Write(ctx, &sink.Batch{ID: 42, Attempt: 1, Records: recs}); err != nil || n != 3 {
		t.Fatalf("retry Write = %d, %v", n, err)
	}
	if got := query(t, s, "SELECT count() FROM flows"); got != "3" {
		t.Errorf("after a retry of a stored batch: %s rows, want 3", got)
	}
}

func TestWriterMigratesTableFromOlderSchema(t *testing.T) {
	s := clickhousetest.Start(t)
	query(t, s, "CREATE TABLE flows (timeInserted DateTime DEFAULT now(), flowStartSeconds DateTime, flowEndSeconds DateTime, sourcePodName String) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(timeInserted) ORDER BY (timeInserted, flowEndSeconds)")
	query(t, s, "INSERT INTO flows (flowStartSeconds, flowEndSeconds, sourcePodName) VALUES (now(), now(), 'old')")
	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{testRecord(0)}}); err != nil {
		t.Fatalf("Write after migration: %v", err)
	}
	if got := query(t, s, "SELECT count() FROM system.columns WHERE database = 'default' AND table = 'flows'"); got != strconv.Itoa(len(sink.ColumnNames())+1) {
		t.Errorf("columns after migration = %s, want %d", got, len(sink.ColumnNames())+1)
	}
	if got := query(t, s, "SELECT sourcePodName, tlsJA4 FROM flows ORDER BY sourcePodName"); got != "client\tja4\nold" {
		t.Errorf("rows = %q, want the old row kept and the new one complete", got)
	}
}

// The same records through both sinks store the same rows, field by field
// (issue 8 item 4), and a JSON lines file loads into the table as it is.
func TestJSONLinesAndClickHouseStoreTheSameRows(t *testing.T) {
	s := clickhousetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var recs []*correlate.Record
	for i := range 12 {
		recs = append(recs, testRecord(i))
	}
	batch := &sink.Batch{ID: 7, Records: recs}
	w := newWriter(t, s, "")
	defer w.Close()
	if n, err := w.Write(ctx, batch); err != nil || n != len(recs) {
		t.Fatalf("clickhouse Write = %d, %v", n, err)
	}
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	jw, err := jsonl.New(jsonl.Config{Path: path, Aggregator: "agg-1"})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := jw.Write(ctx, batch); err != nil || n != len(recs) {
		t.Fatalf("jsonl Write = %d, %v", n, err)
	}
	if err := jw.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(file), []byte("\n"))
	stored := readTable(t, s, "flows")
	if len(stored) != len(recs) || len(lines) != len(recs) {
		t.Fatalf("%d rows in ClickHouse, %d lines; want %d each", len(stored), len(lines), len(recs))
	}
	for i := range recs {
		fromJSON, err := sink.ParseJSONRow(lines[i])
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if d := fromJSON.Diff(&stored[i]); len(d) > 0 {
			t.Errorf("record %d: JSON lines and ClickHouse differ: %v", i, d)
		}
		want := sink.RowOf(recs[i], &sink.Meta{Aggregator: "agg-1", BatchID: 7})
		if d := stored[i].Diff(&want); len(d) > 0 {
			t.Errorf("record %d: ClickHouse differs from the column table: %v", i, d)
		}
	}

	// Same names and types: the file loads with FORMAT JSONEachRow.
	v := w.Version()
	query(t, s, strings.Replace(CreateTableSQL("default", "replay", v), "`replay`", "replay", 1))
	if _, err := s.Query("INSERT INTO replay FORMAT JSONEachRow\n" + string(file)); err != nil {
		t.Fatalf("load the JSON lines into ClickHouse: %v", err)
	}
	replayed := readTable(t, s, "replay")
	if len(replayed) != len(recs) {
		t.Fatalf("%d rows loaded from the JSON lines, want %d", len(replayed), len(recs))
	}
	for i := range recs {
		if d := replayed[i].Diff(&stored[i]); len(d) > 0 {
			t.Errorf("record %d loaded from JSON lines differs: %v", i, d)
		}
	}
}

// metricValue reads one sink metric from reg (0 when absent).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// runningSink runs a real sink.Sink over a ClickHouse writer.
type runningSink struct {
	*sink.Sink
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startSink(t *testing.T, s *clickhousetest.Server, spool string) *runningSink {
	t.Helper()
	reg := prometheus.NewRegistry()
	sk, err := sink.New(sink.Config{Name: "clickhouse", Writer: newWriter(t, s, ""), MaxBatch: 5, QueueRecords: 1000,
		CommitInterval: 20 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Spool: sink.SpoolConfig{Path: spool, Aggregator: "agg-1"}}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs := &runningSink{Sink: sk, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rs.done <- sk.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-rs.done; err != nil {
			t.Errorf("sink Run: %v", err)
		}
	})
	return rs
}

func (rs *runningSink) metric(t *testing.T, name string, labels map[string]string) float64 {
	return metricValue(t, rs.reg, name, labels)
}

func (rs *runningSink) written(t *testing.T) float64 {
	return rs.metric(t, "flowlens_aggregator_sink_records_written_total", nil)
}

func (rs *runningSink) parked(t *testing.T) float64 {
	return rs.metric(t, "flowlens_aggregator_sink_records_parked_total", nil)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 30s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putRange(rs *runningSink, from, to int) {
	for i := from; i < to; i++ {
		rs.Put(testRecord(i))
	}
}

// A column dropped while the aggregator runs is re-created and the rows
// keep coming: none parked, none dropped (issue 9 item 6).
func TestColumnDroppedAtRuntimeIsRecreatedAndRowsContinue(t *testing.T) {
	s := clickhousetest.Start(t)
	rs := startSink(t, s, filepath.Join(t.TempDir(), "spool.jsonl"))
	putRange(rs, 0, 10)
	eventually(t, "first 10 rows written", func() bool { return rs.written(t) == 10 })
	query(t, s, "ALTER TABLE flows DROP COLUMN httpVals")
	query(t, s, "ALTER TABLE flows DROP COLUMN tlsJA4")
	putRange(rs, 10, 30)
	eventually(t, "all 30 rows written", func() bool { return rs.written(t) == 30 })
	if got := query(t, s, "SELECT count() FROM system.columns WHERE database = 'default' AND table = 'flows' AND name IN ('httpVals', 'tlsJA4')"); got != "2" {
		t.Errorf("dropped columns re-created: %s of 2", got)
	}
	if got := query(t, s, "SELECT count(), countIf(httpVals != '') FROM flows"); got != "30\t20" {
		t.Errorf("count, rows with httpVals = %q; want 30 rows, the 20 written after the drop with httpVals", got)
	}
	if p := rs.parked(t); p != 0 {
		t.Errorf("parked %v records; a repairable schema change must not park", p)
	}
	if err := rs.Healthy(); err != nil {
		t.Errorf("Healthy: %v", err)
	}
	// The whole table dropped is re-created too.
	query(t, s, "DROP TABLE flows")
	putRange(rs, 30, 35)
	eventually(t, "rows after DROP TABLE written", func() bool { return rs.written(t) == 35 })
	if got := query(t, s, "SELECT count() FROM flows"); got != "5" {
		t.Errorf("rows in the re-created table: %s, want 5", got)
	}
}

// A column of another type is a permanent error: batches are parked in
// the spool, counted, and health fails until the column is fixed; the
// spool then loads into the table as it is.
func TestColumnOfWrongTypeParksBatchesAndFailsHealth(t *testing.T) {
	s := clickhousetest.Start(t)
	spool := filepath.Join(t.TempDir(), "spool.jsonl")
	rs := startSink(t, s, spool)
	putRange(rs, 0, 5)
	eventually(t, "first rows written", func() bool { return rs.written(t) == 5 })

	query(t, s, "ALTER TABLE flows MODIFY COLUMN octetTotalCount String")
	putRange(rs, 5, 17)
	eventually(t, "12 records parked", func() bool { return rs.parked(t) == 12 })
	if got := rs.metric(t, "flowlens_aggregator_sink_write_permanent_errors_total", nil); got < 3 {
		t.Errorf("permanent errors = %v, want one per batch (>= 3)", got)
	}
	err := rs.Healthy()
	if err == nil || !sink.IsPermanent(err) || !strings.Contains(err.Error(), "octetTotalCount is String, want UInt64") {
		t.Errorf("Healthy = %v, want a permanent error naming the column", err)
	}
	// An aggregator starting on such a table learns it at once.
	fresh := newWriter(t, s, "")
	if err := fresh.EnsureSchema(context.Background()); !sink.IsPermanent(err) {
		t.Errorf("EnsureSchema on a table with a column of another type = %v, want a permanent error", err)
	}
	fresh.Close()
	if h := rs.metric(t, "flowlens_aggregator_sink_healthy", nil); h != 0 {
		t.Errorf("flowlens_aggregator_sink_healthy = %v, want 0", h)
	}
	if got := query(t, s, "SELECT count() FROM flows"); got != "5" {
		t.Errorf("rows = %s, want only the 5 before the change", got)
	}
	if rs.Len() != 0 {
		t.Errorf("queue holds %d: parked batches must not block it", rs.Len())
	}
	for reason := range map[string]bool{"blocked_timeout": true, "permanent_error": true, "spool_full": true, "spool_error": true} {
		if d := rs.metric(t, "flowlens_aggregator_sink_records_dropped_total", map[string]string{"reason": reason}); d != 0 {
			t.Errorf("dropped{%s} = %v", reason, d)
		}
	}
	st, err := os.Stat(spool)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("spool mode %v, want 0600", st.Mode().Perm())
	}

	// The operator changes the column back: rows flow and health recovers.
	query(t, s, "ALTER TABLE flows MODIFY COLUMN octetTotalCount UInt64")
	putRange(rs, 17, 22)
	eventually(t, "rows after the fix written", func() bool { return rs.written(t) == 10 })
	if err := rs.Healthy(); err != nil {
		t.Errorf("Healthy after the fix: %v", err)
	}
	// ... and loads the spool: nothing was lost.
	b, err := os.ReadFile(spool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Query("INSERT INTO flows FORMAT JSONEachRow\n" + string(b)); err != nil {
		t.Fatalf("load the spool: %v", err)
	}
	if got := query(t, s, "SELECT count(), uniqExact(sourceTransportPort) FROM flows"); got != "22\t22" {
		t.Errorf("after loading the spool: %s, want 22 distinct rows", got)
	}
}
