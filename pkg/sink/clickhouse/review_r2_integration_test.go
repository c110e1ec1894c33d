//go:build integration

package clickhouse

// Review R2 (issue 14): a check of a documented claim against a real
// ClickHouse 18.16. It PASSES: 18.16 resolves the view's target before
// writing anything, so the refused insert stored nothing.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// docs/ui.md: "A rollup table dropped by hand while its view exists makes
// inserts fail with UNKNOWN_TABLE, which the sink treats as a schema
// error: it checks the schema again, re-creates the table and retries."
// Were the block committed to the flows table before the view failed, the
// retry would store the batch twice.
func TestReviewR2DroppedRollupDoesNotDuplicateRows(t *testing.T) {
	s := clickhousetest.Start(t)
	createFlowsTable(t, s.Query, "flows")
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Rollup: &RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write := func(id uint64) {
		t.Helper()
		recs := []*correlate.Record{testRecord(int(3 * id)), testRecord(int(3*id + 1)), testRecord(int(3*id + 2))}
		if n, err := w.Write(ctx, &sink.Batch{ID: id, Records: recs}); err != nil || n != 3 {
			t.Fatalf("write batch %d: %d %v", id, n, err)
		}
	}
	write(1)
	query(t, s, "DROP TABLE default.flows_rollup")
	write(2)
	if got := query(t, s, "SELECT count() FROM default.flows WHERE batchId = 2"); got != "3" {
		t.Errorf("batch 2 (3 records) is stored as %s rows", got)
	}
	raw := query(t, s, "SELECT sum(octetDeltaCount) FROM default.flows WHERE batchId = 2")
	ru := query(t, s, "SELECT sumMerge(bytes) FROM default.flows_rollup")
	if raw == "" || ru == "" {
		t.Fatalf("raw %q rollup %q", raw, ru)
	}
	t.Logf("batch 2 raw bytes %s, rollup bytes %s", raw, ru)
}

// Rows inserted through the Distributed flows table (a backfill, another
// tool) reach each shard's local table and so its view: the Distributed
// rollup's sums equal the raw table's. (Passes on 18.16: recorded as
// evidence for the review.)
func TestReviewR2DistributedInsertReachesRollup(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	cfg := clusterConfig(c)
	cfg.Rollup = &RollupConfig{}
	ws, err := NewCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, w := range ws {
		defer w.Close()
		if err := w.EnsureSchema(ctx); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC().Truncate(time.Minute)
	for i := 0; i < 10; i++ {
		cquery(t, c, 0, fmt.Sprintf("INSERT INTO default.flows (flowEndSeconds, flowEndReason, sourcePodNamespace, sourcePodName, destinationIP, "+
			"destinationTransportPort, protocolIdentifier, octetDeltaCount, connectionKey) VALUES (toDateTime(%d), 3, 'demo', 'web-%d', '192.0.2.1', 443, 6, %d, %d)",
			now.Unix(), i, 10+i, i))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw := cquery(t, c, 1, "SELECT count(), sum(octetDeltaCount) FROM default.flows")
		ru := cquery(t, c, 1, "SELECT uniqMerge(connections), sumMerge(bytes) FROM default.flows_rollup")
		perShard := cquery(t, c, 1, "SELECT count() FROM default.flows_local_rollup")
		if raw == "10\t145" && ru == raw && perShard != "0" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("raw %q, rollup %q (shard 1 local rollup rows %s)", raw, ru, perShard)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
