//go:build integration

package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

func clusterAggConfig(t *testing.T, c *clickhousetest.Cluster, shards []string, listen ...string) *aggregatorconfig.Config {
	cfg := clickhouseConfig(t, "", listen...)
	cfg.Sinks.ClickHouse.Cluster = &aggregatorconfig.ClickHouseCluster{Name: c.Name, Shards: shards}
	return cfg
}

// Two agents' halves through the aggregator into a two-shard cluster:
// every connection is one correlated row in the Distributed table, each on
// the shard of its connectionKey, both shards used, and the write-ahead
// log sees every row committed by the shards' sinks.
func TestClusterSinkStoresEachConnectionOnceOnItsShard(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	cfg := clusterAggConfig(t, c, c.Shards(), "tcp://127.0.0.1:0")
	walDir := filepath.Join(t.TempDir(), "wal")
	cfg.WAL.Enabled, cfg.WAL.Dir = true, walDir
	cfg.Sinks.ClickHouse.Spool.Path = filepath.Join(t.TempDir(), "spool")
	ra := startAggregator(t, cfg)
	addr := ra.addr(t, "tcp")
	nodeA := startAgent(t, addr, ipfixexport.TCP, 1)
	nodeB := startAgent(t, addr, ipfixexport.TCP, 2)
	const n = 300
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	for i := 0; i < n; i++ {
		src, dst := halves(i, start)
		nodeA.export(t, src)
		nodeB.export(t, dst)
	}
	ra.capture.waitFor(t, n, 30*time.Second)
	nodeA.stop()
	nodeB.stop()
	ra.stop(t)

	for i := 0; i < 2; i++ {
		got := chQuery(t, c.Server(i), "SELECT count(), countIf(connectionKey % 2 != "+strconv.Itoa(i)+") FROM flows_local")
		f := strings.Split(got, "\t")
		if len(f) != 2 || f[0] == "0" || f[1] != "0" {
			t.Errorf("shard %d local rows, rows of the other shard = %q; want some, none", i, got)
		}
		got = chQuery(t, c.Server(i), "SELECT count(), uniqExact(sourceTransportPort), countIf(correlation = 'correlated' AND packetTotalCountFromSourceNode = 10 AND packetTotalCountFromDestinationNode = 9) FROM flows")
		if want := strconv.Itoa(n) + "\t" + strconv.Itoa(n) + "\t" + strconv.Itoa(n); got != want {
			t.Errorf("through the Distributed table on shard %d: rows, connections, correlated = %q, want %q", i, got, want)
		}
	}
	// The shards' sinks (the test's capture sink is not registered).
	if written := counterSum(t, ra.reg, "flowlens_aggregator_sink_records_written_total"); written != n {
		t.Errorf("records written by the shards' sinks = %v, want %d", written, n)
	}
	if segs, _ := filepath.Glob(filepath.Join(walDir, "*.wal")); len(segs) != 0 {
		t.Errorf("WAL segments left after a clean stop: %v (shard sinks did not commit)", segs)
	}
}

// A shard list that is not the servers' remote_servers cluster is refused
// at start, naming the field and the difference.
func TestAggregatorRefusesClusterThatDisagreesWithTheServers(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	s := c.Shards()
	for _, tc := range []struct {
		name   string
		shards []string
		want   string
	}{
		{"reversed", []string{s[1], s[0]}, "cluster.shards[0] is " + s[1]},
		{"one of two", []string{s[0]}, "the server defines 2 shards, cluster.shards lists 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clusterAggConfig(t, c, tc.shards, "tcp://127.0.0.1:0")
			if err := cfg.Finish(); err != nil {
				t.Fatal(err)
			}
			a, err := newAggregator(cfg, prometheus.NewRegistry())
			if err == nil {
				a.close()
				t.Fatal("aggregator started with a shard list the servers disagree with")
			}
			if !clickhouse.IsClusterMismatch(err) || !strings.Contains(err.Error(), "sinks.clickhouse.cluster") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v: want a cluster mismatch naming sinks.clickhouse.cluster and %q", err, tc.want)
			}
		})
	}
}

// A server that was the single ClickHouse (a MergeTree `flows`) made
// shard 0 of a cluster: the aggregator refuses to start rather than
// write to flows_local while `flows` there shows only the old rows.
func TestAggregatorRefusesClusterOverASingleServersTable(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	if _, err := c.Query(0, clickhouse.CreateTableSQL("default", "flows", clickhouse.Version{Major: 18, Minor: 16})); err != nil {
		t.Fatal(err)
	}
	cfg := clusterAggConfig(t, c, c.Shards(), "tcp://127.0.0.1:0")
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	a, err := newAggregator(cfg, prometheus.NewRegistry())
	if err == nil {
		a.close()
		t.Fatal("aggregator started with a MergeTree flows where the Distributed table belongs")
	}
	if !clickhouse.IsForeignTable(err) || !strings.Contains(err.Error(), "sinks.clickhouse.table") || !strings.Contains(err.Error(), "RENAME TABLE") {
		t.Errorf("error %v: want a foreign-table error naming sinks.clickhouse.table and how to move it", err)
	}
	for i := 0; i < 2; i++ {
		if out, err := c.Query(i, "SELECT count() FROM system.tables WHERE database = 'default' AND name = 'flows_local'"); err != nil || strings.TrimSpace(out) != "0" && i == 0 {
			t.Errorf("shard %d: flows_local: %q, %v; want none next to the foreign flows", i, out, err)
		}
	}
}
