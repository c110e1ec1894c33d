//go:build integration

package clickhouse

import (
	"context"
	"fmt"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// StoredBatches answers from the writer's own table (a shard's local
// table in a cluster), for its own aggregator only, across chunked
// queries: what the WAL replay relies on to skip batches stored before a
// crash.
func TestStoredBatchesFindsThisAggregatorsBatchesOnEachShard(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	ws, err := NewCluster(clusterConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	cfg := clusterConfig(c)
	cfg.Aggregator = "agg-2"
	other, err := NewCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, w := range append(ws, other...) {
			_ = w.Close()
		}
	}()
	ctx := context.Background()
	write := func(w *Writer, id uint64, n int) {
		t.Helper()
		var rs []*correlate.Record
		for i := range n {
			rs = append(rs, testRecord(int(id)*10+i))
		}
		if _, err := w.Write(ctx, &sink.Batch{ID: id, Records: rs}); err != nil {
			t.Fatal(err)
		}
	}
	write(ws[0], 11, 3)
	write(ws[1], 12, 2)
	write(other[0], 13, 4) // another aggregator's batch

	// More ids than one query takes, the stored ones in different chunks.
	ids := []uint64{11, 12, 13}
	for i := range 2 * storedBatchesChunk {
		ids = append(ids, uint64(1000+i))
	}
	ids = append(ids, 12)
	for i, want := range []string{"map[11:3]", "map[12:2]"} {
		got, err := ws[i].StoredBatches(ctx, ids)
		if err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
		if fmt.Sprint(got) != want {
			t.Errorf("shard %d StoredBatches = %v, want %s (its local table, agg-1 only)", i, got, want)
		}
	}
	if got, err := other[0].StoredBatches(ctx, ids); err != nil || fmt.Sprint(got) != "map[13:4]" {
		t.Errorf("agg-2 on shard 0: %v %v, want map[13:4]", got, err)
	}
}
