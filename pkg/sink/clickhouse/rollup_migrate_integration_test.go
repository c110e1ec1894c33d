//go:build integration

package clickhouse

import (
	"context"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// A rollup an older flowlens created (SummingMergeTree of UInt64 sums,
// its view summing them) is dropped with its view and re-created as the
// AggregatingMergeTree at start; writes then fill the new one.
func TestOldSummingRollupIsRecreated(t *testing.T) {
	s := clickhousetest.Start(t)
	createFlowsTable(t, s.Query, "flows")
	query(t, s, "CREATE TABLE default.flows_rollup (minute DateTime, sourceNode String, destinationNode String, port UInt16, protocol UInt8, "+
		"appProtocol String, sourceNamespace String, destinationNamespace String, bytes UInt64, reverseBytes UInt64, packets UInt64, "+
		"reversePackets UInt64, connections UInt64, requests UInt64, http4xx UInt64, http5xx UInt64, dnsErrors UInt64) "+
		"ENGINE = SummingMergeTree((bytes)) PARTITION BY toYYYYMMDD(minute) ORDER BY (minute, sourceNode, destinationNode, port, protocol, appProtocol, sourceNamespace, destinationNamespace)")
	query(t, s, "CREATE MATERIALIZED VIEW default.flows_rollup_mv TO default.flows_rollup AS SELECT toStartOfMinute(flowEndSeconds) AS minute, "+
		"'' AS sourceNode, '' AS destinationNode, toUInt16(0) AS port, toUInt8(0) AS protocol, '' AS appProtocol, '' AS sourceNamespace, "+
		"'' AS destinationNamespace, toUInt64(sum(octetDeltaCount)) AS bytes FROM default.flows GROUP BY minute")
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Rollup: &RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(t, s, "SELECT engine FROM system.tables WHERE database = 'default' AND name = 'flows_rollup'"); got != "AggregatingMergeTree" {
		t.Fatalf("rollup engine %q after start, want AggregatingMergeTree", got)
	}
	recs := []*correlate.Record{testRecord(1), testRecord(2)}
	if n, err := w.Write(ctx, &sink.Batch{ID: 1, Records: recs}); err != nil || n != 2 {
		t.Fatalf("write: %d %v", n, err)
	}
	raw := query(t, s, "SELECT sum(octetDeltaCount), uniqExact(connectionKey, flowStartSeconds) FROM default.flows")
	if ru := query(t, s, "SELECT sumMerge(bytes), uniqMerge(connections) FROM default.flows_rollup"); ru != raw {
		t.Errorf("rollup %q, raw %q", ru, raw)
	}
	// A second start keeps the new rollup (and its rows).
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	if ru := query(t, s, "SELECT sumMerge(bytes), uniqMerge(connections) FROM default.flows_rollup"); ru != raw {
		t.Errorf("after a second EnsureSchema: rollup %q, raw %q", ru, raw)
	}
}
