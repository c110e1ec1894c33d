//go:build integration

package servicemap_test

import (
	"context"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flowlens/flowlens/pkg/servicemap"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// With every shard's view in place the map of a cluster is read from the
// Distributed rollup, and it equals the raw rows of both shards.
func TestClusterMapUsesRollupWhenEveryShardHasItsView(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	ws, err := clickhouse.NewCluster(clickhouse.Config{Aggregator: "test", Rollup: &clickhouse.RollupConfig{},
		Cluster: &clickhouse.ClusterConfig{Name: c.Name, Shards: c.Shards()}})
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
	t0 := futureMinute()
	rows := dataset(t0)[:4]
	for i := 0; i < 2; i++ {
		(&fixture{srv: c.Server(i)}).insertInto(t, "flows_local", rows[2*i:2*i+2]...)
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{c.Shards()[1]}, Auth: ch.Auth{Database: "default", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := servicemap.New(servicemap.Config{Table: "flows"}, conn)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := r.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Source: servicemap.SourceRaw})
	if err != nil {
		t.Fatal(err)
	}
	checkEdges(t, "raw", raw, edgeAPI, edgeExt, edgeDNS)
	auto, err := r.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180)})
	if err != nil {
		t.Fatal(err)
	}
	if !auto.Rollup {
		t.Fatalf("every shard has its view, yet the map was read from raw rows")
	}
	checkEdges(t, "rollup", auto, edgeAPI, edgeExt, edgeDNS)
}
