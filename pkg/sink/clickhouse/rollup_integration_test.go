//go:build integration

package clickhouse

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// rollupInputColumns are the columns the rollup's view reads that older
// column lists lack; created here the way a migration adds them, until
// pkg/sink/columns.go has them (then the sink's DDL does).
var rollupInputColumns = []struct{ name, typ string }{
	{"sourceWorkloadKind", "String"}, {"sourceWorkloadName", "String"},
	{"destinationWorkloadKind", "String"}, {"destinationWorkloadName", "String"},
	{"httpRequests", "UInt64"}, {"http4xx", "UInt64"}, {"http5xx", "UInt64"}, {"dnsErrors", "UInt64"},
}

func createFlowsTable(t *testing.T, query func(string) (string, error), table string) {
	t.Helper()
	for _, q := range []string{CreateTableSQL("default", table, Version{Major: 18, Minor: 16})} {
		if _, err := query(q); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range rollupInputColumns {
		if _, ok := sink.LookupColumn(c.name); !ok {
			if _, err := query(AddColumnSQL("default", table, c.name, c.typ)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// insertAt stores one flow row ending at end with bytes octets.
func insertAt(t *testing.T, query func(string) (string, error), table string, end time.Time, bytes int) {
	t.Helper()
	q := fmt.Sprintf("INSERT INTO default.%s (flowEndSeconds, flowEndReason, sourcePodNamespace, sourcePodName, sourceWorkloadKind, sourceWorkloadName, destinationIP, destinationTransportPort, protocolIdentifier, octetDeltaCount, connectionKey) "+
		"VALUES (toDateTime(%d), 3, 'demo', 'web-1', 'Deployment', 'web', '192.0.2.1', 443, 6, %d, %d)", table, end.Unix(), bytes, end.Unix())
	if _, err := query(q); err != nil {
		t.Fatal(err)
	}
}

// On a server without TTL (18.16) the writer drops the rollup's daily
// partitions once all of a day has expired, and nothing else: not a day
// partly inside the retention, not the flows table.
func TestRollupRetentionDropsExpiredDays(t *testing.T) {
	s := clickhousetest.Start(t)
	createFlowsTable(t, s.Query, "flows")
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Rollup: &RollupConfig{Retention: 48 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	if w.Version().AtLeast(ttlFrom.Major, ttlFrom.Minor) {
		t.Fatalf("server %s has TTL; this test is for servers without it", w.Version())
	}
	now := time.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	for i, end := range []time.Time{today.Add(-72 * time.Hour).Add(time.Hour), today.Add(-48 * time.Hour).Add(23 * time.Hour), today.Add(-24 * time.Hour), now} {
		insertAt(t, s.Query, "flows", end, 10*(i+1))
	}
	n, err := w.PruneRollup(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("dropped %d partitions, want 1", n)
	}
	got := query(t, s, "SELECT toYYYYMMDD(minute), sumMerge(bytes) FROM default.flows_rollup GROUP BY toYYYYMMDD(minute) ORDER BY toYYYYMMDD(minute)")
	want := strings.Join([]string{
		today.Add(-48*time.Hour).Format("20060102") + "\t20",
		today.Add(-24*time.Hour).Format("20060102") + "\t30",
		today.Format("20060102") + "\t40",
	}, "\n")
	if got != want {
		t.Errorf("rollup days:\n%s\nwant\n%s", got, want)
	}
	if got := query(t, s, "SELECT count(), sum(octetDeltaCount) FROM default.flows"); got != "4\t100" {
		t.Errorf("flows table changed: %s", got)
	}
	// Retention off: nothing is dropped.
	w2, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Rollup: &RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if n, err := w2.PruneRollup(ctx, now.Add(1000*time.Hour)); n != 0 || err != nil {
		t.Errorf("retention 0 dropped %d: %v", n, err)
	}
}

// In cluster mode each shard's view fills its own rollup from its local
// table, and the Distributed rollup on any shard sums them all.
func TestRollupCluster(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	for i := 0; i < c.Len(); i++ {
		srv := c.Server(i)
		createFlowsTable(t, srv.Query, "flows_local")
	}
	cfg := clusterConfig(c)
	cfg.Rollup = &RollupConfig{Retention: 24 * time.Hour}
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
	insertAt(t, c.Server(0).Query, "flows_local", now, 100)
	insertAt(t, c.Server(1).Query, "flows_local", now.Add(time.Second), 23)
	for i := 0; i < c.Len(); i++ {
		if got := cquery(t, c, i, "SELECT name, engine FROM system.tables WHERE database = 'default' AND name LIKE '%rollup%' ORDER BY name"); got !=
			"flows_local_rollup\tAggregatingMergeTree\nflows_rollup\tDistributed\nflows_rollup_mv\tMaterializedView" {
			t.Errorf("shard %d rollup objects:\n%s", i, got)
		}
		if got := cquery(t, c, i, "SELECT sumMerge(bytes), uniqMerge(connections) FROM default.flows_rollup"); got != "123\t2" {
			t.Errorf("shard %d: Distributed rollup sums %s, want 123 2", i, got)
		}
	}
	if got := cquery(t, c, 1, "SELECT sumMerge(bytes) FROM default.flows_local_rollup"); got != "23" {
		t.Errorf("shard 1 local rollup %s, want 23", got)
	}
}

// Rows the writer inserts (its native batch insert, the sink's column
// list) reach the rollup through the view, with the same sums.
func TestRollupFilledByWriterInserts(t *testing.T) {
	s := clickhousetest.Start(t)
	createFlowsTable(t, s.Query, "flows")
	// No retention: the records are from 2023, which a retention would
	// drop from the rollup after the first write (on 18.16).
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1", Rollup: &RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for b := uint64(0); b < 3; b++ {
		recs := []*correlate.Record{testRecord(int(3 * b)), testRecord(int(3*b + 1)), testRecord(int(3*b + 2))}
		if n, err := w.Write(ctx, &sink.Batch{ID: 100 + b, Records: recs}); err != nil || n != 3 {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	raw := query(t, s, "SELECT sum(octetDeltaCount), sum(reverseOctetDeltaCount), sum(packetDeltaCount), sum(reversePacketDeltaCount), "+
		"uniqExact(connectionKey, flowStartSeconds), sum(httpRequests), sum(http4xx), sum(http5xx), sum(dnsErrors) FROM default.flows")
	ru := query(t, s, "SELECT sumMerge(bytes), sumMerge(reverseBytes), sumMerge(packets), sumMerge(reversePackets), uniqMerge(connections), sumMerge(requests), "+
		"sumMerge(http4xx), sumMerge(http5xx), sumMerge(dnsErrors) FROM default.flows_rollup")
	if raw != ru || !strings.HasPrefix(raw, "2700\t4500\t27\t45\t") {
		t.Errorf("rollup sums %s, raw %s", ru, raw)
	}
	if got := query(t, s, "SELECT DISTINCT sourceNode, destinationNode, port, protocol, appProtocol FROM default.flows_rollup"); got !=
		"w:ns-a/Deployment/client\ts:ns-b/web\t8080\t6\thttp" {
		t.Errorf("rollup keys %q", got)
	}
}
