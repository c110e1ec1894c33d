//go:build integration

package clickhouse

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

func clusterConfig(c *clickhousetest.Cluster, shards ...string) Config {
	if shards == nil {
		shards = c.Shards()
	}
	return Config{Aggregator: "agg-1", Cluster: &ClusterConfig{Name: c.Name, Shards: shards}}
}

func cquery(t *testing.T, c *clickhousetest.Cluster, shard int, q string) string {
	t.Helper()
	out, err := c.Query(shard, q)
	if err != nil {
		t.Fatalf("shard %d: %v", shard, err)
	}
	return strings.TrimSpace(out)
}

// runningCluster runs a sink per shard behind a ClusterSink, as the
// aggregator does.
type runningCluster struct {
	*ClusterSink
	sinks []*sink.Sink
	reg   *prometheus.Registry
}

func startClusterSink(t *testing.T, c *clickhousetest.Cluster, spoolDir string) *runningCluster {
	t.Helper()
	ws, err := NewCluster(clusterConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	rc := &runningCluster{reg: prometheus.NewRegistry()}
	for i, w := range ws {
		cfg := sink.Config{Name: fmt.Sprintf("clickhouse-shard%d", i), Writer: w, MaxBatch: 50, QueueRecords: 10_000,
			CommitInterval: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}
		if spoolDir != "" {
			cfg.Spool = sink.SpoolConfig{Path: filepath.Join(spoolDir, fmt.Sprintf("spool.shard%d", i)), Aggregator: "agg-1"}
		}
		s, err := sink.New(cfg, rc.reg)
		if err != nil {
			t.Fatal(err)
		}
		rc.sinks = append(rc.sinks, s)
	}
	if rc.ClusterSink, err = NewClusterSink(rc.sinks); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cluster sink Run: %v", err)
		}
	})
	return rc
}

func (rc *runningCluster) metric(t *testing.T, name string, shard int) float64 {
	return metricValue(t, rc.reg, name, map[string]string{"sink": fmt.Sprintf("clickhouse-shard%d", shard)})
}

// expected is what n records (testRecord(0..n-1)) should leave on each
// shard, computed from the records by the columns themselves.
type expected struct {
	perShard []int
	octets   uint64
}

func expect(n, shards int) expected {
	key, _ := sink.LookupColumn(ShardingKey)
	oct, _ := sink.LookupColumn("octetDeltaCount")
	e := expected{perShard: make([]int, shards)}
	for i := 0; i < n; i++ {
		r := testRecord(i)
		e.perShard[ShardFor(key.Num(r, &sink.Meta{}), shards)]++
		e.octets += oct.Num(r, &sink.Meta{})
	}
	return e
}

func putRecords(p interface{ Put(*correlate.Record) }, from, to int) {
	for i := from; i < to; i++ {
		p.Put(testRecord(i))
	}
}

// checkCluster asserts the rows of n records are all there, once each,
// each on the shard of its connectionKey, readable through the Distributed
// table from every shard.
func checkClusterRows(t *testing.T, c *clickhousetest.Cluster, n int) {
	t.Helper()
	e := expect(n, c.Len())
	for i := 0; i < c.Len(); i++ {
		if e.perShard[i] == 0 {
			t.Fatalf("test data puts no record on shard %d; use more records", i)
		}
		got := cquery(t, c, i, fmt.Sprintf("SELECT count(), countIf(connectionKey %% %d != %d) FROM flows_local", c.Len(), i))
		if want := fmt.Sprintf("%d\t0", e.perShard[i]); got != want {
			t.Errorf("shard %d local rows, rows of another shard = %q, want %q", i, got, want)
		}
		// Through the Distributed table, from this shard: every row of
		// every shard, none twice, sums as written.
		got = cquery(t, c, i, "SELECT count(), uniqExact(connectionKey), uniqExact(sourceTransportPort), sum(octetDeltaCount), countIf(correlation = 'correlated') FROM flows")
		if want := fmt.Sprintf("%d\t%d\t%d\t%d\t%d", n, n, n, e.octets, n); got != want {
			t.Errorf("through the Distributed table on shard %d: count, distinct keys, distinct ports, sum(octets), correlated = %q, want %q", i, got, want)
		}
	}
}

func TestClusterRowsLandOnTheShardOfTheirConnectionKey(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	rc := startClusterSink(t, c, "")
	const n = 400
	putRecords(rc, 0, n)
	eventually(t, "every row through the Distributed table", func() bool {
		out, err := c.Query(0, "SELECT count() FROM flows")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(n)
	})
	checkClusterRows(t, c, n)
	e := expect(n, 2)
	for i := range 2 {
		if got := rc.metric(t, "flowlens_aggregator_sink_records_written_total", i); got != float64(e.perShard[i]) {
			t.Errorf("shard %d sink wrote %v, want %d", i, got, e.perShard[i])
		}
		// Both tables exist on every shard, the Distributed one over the
		// cluster's local tables.
		got := cquery(t, c, i, "SELECT name, engine FROM system.tables WHERE database = 'default' AND name IN ('flows', 'flows_local') ORDER BY name")
		if got != "flows\tDistributed\nflows_local\tMergeTree" {
			t.Errorf("shard %d tables = %q", i, got)
		}
	}
	// A Distributed insert of the same rows picks the same shards: what
	// the direct inserts rely on to match Distributed's placement.
	cquery(t, c, 0, "CREATE TABLE probe_local (connectionKey UInt64) ENGINE = MergeTree() ORDER BY connectionKey")
	cquery(t, c, 1, "CREATE TABLE probe_local (connectionKey UInt64) ENGINE = MergeTree() ORDER BY connectionKey")
	cquery(t, c, 0, "CREATE TABLE probe AS probe_local ENGINE = Distributed("+c.Name+", default, probe_local, connectionKey)")
	cquery(t, c, 0, "INSERT INTO probe SELECT connectionKey FROM flows")
	// Distributed inserts reach the other shard asynchronously.
	eventually(t, "the probe rows on both shards", func() bool {
		out, err := c.Query(0, "SELECT count() FROM probe")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(n)
	})
	for i := range 2 {
		got := cquery(t, c, i, "SELECT count() FROM probe_local WHERE connectionKey NOT IN (SELECT connectionKey FROM flows_local)")
		if total := cquery(t, c, i, "SELECT count() FROM probe_local"); total != strconv.Itoa(e.perShard[i]) || got != "0" {
			t.Errorf("shard %d: Distributed placed %s rows (%s not where flowlens put them), want %d", i, total, got, e.perShard[i])
		}
	}
}

// One shard down: its rows wait in its own queue (retried with backoff)
// and arrive once it is back; the other shard's rows are written
// meanwhile; nothing is lost or stored twice.
func TestClusterShardOutageHoldsBackOnlyThatShard(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	rc := startClusterSink(t, c, t.TempDir())
	const n = 300
	e := expect(n, 2)
	putRecords(rc, 0, 100)
	eventually(t, "first rows on both shards", func() bool {
		return rc.metric(t, "flowlens_aggregator_sink_records_written_total", 0)+rc.metric(t, "flowlens_aggregator_sink_records_written_total", 1) == 100
	})
	c.Kill(1)
	putRecords(rc, 100, n)
	eventually(t, "shard 0 has all its rows while shard 1 is down", func() bool {
		out, err := c.Query(0, "SELECT count() FROM flows_local")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(e.perShard[0])
	})
	eventually(t, "shard 1's sink retries", func() bool {
		return rc.metric(t, "flowlens_aggregator_sink_write_retries_total", 1) >= 2
	})
	if rc.sinks[1].FailingSince().IsZero() || rc.sinks[1].Len() == 0 {
		t.Errorf("shard 1 down: failing since %v, queue %d; want failing with rows queued", rc.sinks[1].FailingSince(), rc.sinks[1].Len())
	}
	if !rc.sinks[0].FailingSince().IsZero() || rc.sinks[0].Len() != 0 || rc.metric(t, "flowlens_aggregator_sink_write_errors_total", 0) != 0 {
		t.Errorf("shard 0 affected by shard 1's outage: failing since %v, queue %d, errors %v",
			rc.sinks[0].FailingSince(), rc.sinks[0].Len(), rc.metric(t, "flowlens_aggregator_sink_write_errors_total", 0))
	}
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "shard 1's rows after it is back", func() bool {
		out, err := c.Query(1, "SELECT count() FROM flows_local")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(e.perShard[1])
	})
	checkClusterRows(t, c, n)
	for i := range 2 {
		for _, m := range []string{"flowlens_aggregator_sink_records_parked_total", "flowlens_aggregator_sink_records_dropped_total"} {
			if v := rc.metric(t, m, i); v != 0 {
				t.Errorf("shard %d %s = %v, want 0 (a shard outage is retried, not parked)", i, m, v)
			}
		}
	}
	if !rc.sinks[1].FailingSince().IsZero() {
		t.Error("shard 1 still failing after its rows were written")
	}
}

// A shard whose table takes no rows (a column of another type: permanent)
// parks its batches in its own spool file; the other shard goes on.
func TestClusterShardRejectingRowsParksInItsOwnSpool(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	dir := t.TempDir()
	rc := startClusterSink(t, c, dir)
	putRecords(rc, 0, 50)
	eventually(t, "first rows", func() bool {
		out, err := c.Query(0, "SELECT count() FROM flows")
		return err == nil && strings.TrimSpace(out) == "50"
	})
	cquery(t, c, 1, "ALTER TABLE flows_local MODIFY COLUMN octetTotalCount String")
	const n = 250
	e, before := expect(n, 2), expect(50, 2)
	putRecords(rc, 50, n)
	eventually(t, "shard 1's new rows parked", func() bool {
		return rc.metric(t, "flowlens_aggregator_sink_records_parked_total", 1) == float64(e.perShard[1]-before.perShard[1])
	})
	eventually(t, "shard 0's rows written", func() bool {
		out, err := c.Query(0, "SELECT count() FROM flows_local")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(e.perShard[0])
	})
	if _, err := os.Stat(filepath.Join(dir, "spool.shard0")); !os.IsNotExist(err) {
		t.Errorf("shard 0 spool exists (%v); nothing of shard 0 was rejected", err)
	}
	if err := rc.Healthy(); err == nil || !strings.Contains(err.Error(), "clickhouse-shard1") || strings.Contains(err.Error(), "clickhouse-shard0") {
		t.Errorf("Healthy = %v, want shard 1 (only) reported", err)
	}
	// The operator fixes the column and loads the spool into that shard.
	cquery(t, c, 1, "ALTER TABLE flows_local MODIFY COLUMN octetTotalCount UInt64")
	b, err := os.ReadFile(filepath.Join(dir, "spool.shard1"))
	if err != nil {
		t.Fatal(err)
	}
	cquery(t, c, 1, "INSERT INTO flows_local FORMAT JSONEachRow\n"+string(b))
	checkClusterRows(t, c, n)
}

func TestClusterDefinitionMismatchIsRefused(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	s := c.Shards()
	for _, tc := range []struct {
		name    string
		cfg     Config
		problem string
	}{
		{"shards in another order", clusterConfig(c, s[1], s[0]), "cluster.shards[0] is " + s[1]},
		{"a shard missing", clusterConfig(c, s[0]), "the server defines 2 shards, cluster.shards lists 1"},
		{"unknown cluster", Config{Aggregator: "a", Cluster: &ClusterConfig{Name: "nope", Shards: s}}, "no such cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws, err := NewCluster(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, w := range ws {
					w.Close()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = ws[0].EnsureSchema(ctx)
			if !IsClusterMismatch(err) || !sink.IsPermanent(err) || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("EnsureSchema = %v, want a permanent cluster mismatch saying %q", err, tc.problem)
			}
			// Refused before creating anything.
			if got := cquery(t, c, 0, "SELECT count() FROM system.tables WHERE name LIKE 'flows%'"); got != "0" {
				t.Errorf("%s tables created on a mismatching cluster", got)
			}
		})
	}
}

// Tables an older flowlens created on a shard get the missing columns,
// the local and the Distributed one alike.
func TestClusterMigratesEveryShardsTables(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	cquery(t, c, 1, "CREATE TABLE flows_local (timeInserted DateTime DEFAULT now(), flowStartSeconds DateTime, flowEndSeconds DateTime, connectionKey UInt64) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(timeInserted) ORDER BY (timeInserted, flowEndSeconds)")
	cquery(t, c, 1, "CREATE TABLE flows AS flows_local ENGINE = Distributed("+c.Name+", default, flows_local, connectionKey)")
	ws, err := NewCluster(clusterConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, w := range ws {
		defer w.Close()
		if err := w.EnsureSchema(ctx); err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
	}
	want := strconv.Itoa(len(sink.ColumnNames()) + 1)
	for i := range 2 {
		got := cquery(t, c, i, "SELECT table, count() FROM system.columns WHERE database = 'default' AND table IN ('flows', 'flows_local') GROUP BY table ORDER BY table")
		if got != "flows\t"+want+"\nflows_local\t"+want {
			t.Errorf("shard %d columns per table = %q, want %s each", i, got, want)
		}
	}
	for i, w := range ws {
		if _, err := w.Write(ctx, &sink.Batch{ID: uint64(i + 1), Records: []*correlate.Record{testRecord(i)}}); err != nil {
			t.Fatalf("write to shard %d: %v", i, err)
		}
	}
	if got := cquery(t, c, 1, "SELECT count(), countIf(tlsJA4 = 'ja4') FROM flows"); got != "2\t2" {
		t.Errorf("rows through the migrated Distributed table = %q, want both, complete", got)
	}
}

// A database the shards do not have yet is created on each of them (a
// session in it would be refused before that).
func TestClusterCreatesTheDatabaseOnEveryShard(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	cfg := clusterConfig(c)
	cfg.Database = "flowlens_db"
	ws, err := NewCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, w := range ws {
		defer w.Close()
		if _, err := w.Write(ctx, &sink.Batch{ID: uint64(i + 1), Records: []*correlate.Record{testRecord(i)}}); err != nil {
			t.Fatalf("write to shard %d: %v", i, err)
		}
	}
	for i := range 2 {
		if got := cquery(t, c, i, "SELECT count() FROM flowlens_db.flows_local"); got != "1" {
			t.Errorf("shard %d local rows = %s, want 1", i, got)
		}
		if got := cquery(t, c, i, "SELECT count() FROM flowlens_db.flows"); got != "2" {
			t.Errorf("shard %d Distributed rows = %s, want 2", i, got)
		}
	}
}
