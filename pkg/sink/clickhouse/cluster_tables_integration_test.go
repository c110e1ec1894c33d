//go:build integration

package clickhouse

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// A table named like the Distributed table that is something else (a
// single server's MergeTree `flows` on a server that became shard 0, or
// a Distributed table over other tables or by another key) must not be
// taken as ours: rows would go to the local tables while queries of
// `flows` there missed them.
func TestClusterRefusesAnExistingTableThatIsNotItsDistributedTable(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	v := Version{Major: 18, Minor: 16}
	for _, tc := range []struct {
		name   string
		create string // on shard 0, as default.flows
		want   string
	}{
		{"single server MergeTree", CreateTableSQL("default", "flows", v), "its engine is MergeTree, not Distributed"},
		{"Distributed over another local table", CreateDistributedTableSQL("default", "flows", c.Name, "other_local", v), `its local table is "other_local", flowlens writes with "flows_local"`},
		{"Distributed by another key", strings.Replace(CreateDistributedTableSQL("default", "flows", c.Name, "flows_local", v), ", connectionKey)", ", rand())", 1), `its sharding key is "rand()"`},
		{"Distributed over another database", CreateDistributedTableSQL("default", "flows", c.Name, "flows_local", v) + "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			create := tc.create
			want := tc.want
			if want == "" {
				create = strings.Replace(create, "'default', 'flows_local'", "'other', 'flows_local'", 1)
				want = `its database is "other", flowlens writes with "default"`
			}
			t.Cleanup(func() {
				for i := 0; i < c.Len(); i++ {
					for _, q := range []string{"DROP TABLE IF EXISTS default.flows", "DROP TABLE IF EXISTS default.flows_local"} {
						if _, err := c.Query(i, q); err != nil {
							t.Errorf("shard %d: %s: %v", i, q, err)
						}
					}
				}
			})
			cquery(t, c, 0, create)
			ws, err := NewCluster(clusterConfig(c))
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
			if !IsForeignTable(err) || !sink.IsPermanent(err) {
				t.Fatalf("EnsureSchema on shard 0 = %v, want a permanent foreign-table error", err)
			}
			for _, s := range []string{want, "sinks.clickhouse.table", "sinks.clickhouse.cluster", "RENAME TABLE `default`.`flows` TO `default`.flows_single"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			// Refused before the local table was created next to it.
			if got := cquery(t, c, 0, "SELECT count() FROM system.tables WHERE database = 'default' AND name = 'flows_local'"); got != "0" {
				t.Errorf("flows_local created next to a foreign flows")
			}
			// Shard 1, which has no such table, is set up as usual.
			if err := ws[1].EnsureSchema(ctx); err != nil {
				t.Errorf("shard 1: %v", err)
			}
		})
	}
	// Ours is accepted again on a second start (also as an older
	// flowlens or an operator wrote it, unquoted).
	cquery(t, c, 0, "CREATE TABLE default.flows_local (connectionKey UInt64, timeInserted DateTime DEFAULT now(), flowEndSeconds DateTime) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(timeInserted) ORDER BY (timeInserted, flowEndSeconds)")
	cquery(t, c, 0, "CREATE TABLE default.flows AS default.flows_local ENGINE = Distributed("+c.Name+", default, flows_local, connectionKey)")
	for round := 0; round < 2; round++ {
		ws, err := NewCluster(clusterConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for i, w := range ws {
			if err := w.EnsureSchema(ctx); err != nil {
				t.Errorf("round %d, shard %d: %v", round, i, err)
			}
			w.Close()
		}
		cancel()
	}
}

// A local table that is no MergeTree is refused too.
func TestClusterRefusesALocalTableThatIsNoMergeTree(t *testing.T) {
	c := clickhousetest.StartCluster(t, 1)
	cquery(t, c, 0, "CREATE TABLE default.flows_local (connectionKey UInt64) ENGINE = Memory")
	ws, err := NewCluster(clusterConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	defer ws[0].Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = ws[0].EnsureSchema(ctx)
	if !IsForeignTable(err) || !strings.Contains(err.Error(), "its engine is Memory") || !strings.Contains(err.Error(), "sinks.clickhouse.cluster.localTable") {
		t.Errorf("EnsureSchema = %v, want a foreign-table error naming the engine and localTable", err)
	}
}

// Equal weights other than 1 place rows elsewhere than ShardFor: the
// Distributed table maps key % Σweights through weight slots.
func TestClusterWithShardWeightsOtherThanOneIsRefused(t *testing.T) {
	c, err := clickhousetest.NewCluster(t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	for i := 0; i < c.Len(); i++ {
		p := filepath.Join(c.Server(i).Dir, "config.xml")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "<weight>1</weight>") {
			t.Fatalf("%s: no <weight>1</weight> to change", p)
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "<weight>1</weight>", "<weight>2</weight>")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < c.Len(); i++ {
		if err := c.Start(i); err != nil {
			t.Fatal(err)
		}
	}
	ws, err := NewCluster(clusterConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, w := range ws {
		err := w.EnsureSchema(ctx)
		if !IsClusterMismatch(err) || !sink.IsPermanent(err) || !strings.Contains(err.Error(), "shard 1 (127.0.0.1:") || !strings.Contains(err.Error(), "has weight 2") {
			t.Errorf("shard %d: EnsureSchema = %v, want a permanent mismatch naming shard 1 and its weight 2", i, err)
		}
		w.Close()
	}
}

// forward is a port-forward to addr: what an aggregator outside the
// servers' network (kubectl port-forward, a proxy) connects to.
func forward(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return ln.Addr().String()
}

// Shards reached through a port-forward have other addresses than
// remote_servers names: refused with both lists by default, accepted
// (shape still checked) with checkShardAddresses: false.
func TestClusterAddressCheckCanBeTurnedOff(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	fwd := []string{forward(t, c.Shards()[0]), forward(t, c.Shards()[1])}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	on := clusterConfig(c, fwd...)
	ws, err := NewCluster(on)
	if err != nil {
		t.Fatal(err)
	}
	err = ws[0].EnsureSchema(ctx)
	want := "the aggregator was given [" + strings.Join(fwd, ", ") + "], remote_servers (system.clusters) lists [" + strings.Join(c.Shards(), ", ") + "]"
	if !IsClusterMismatch(err) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "checkShardAddresses: false") {
		t.Errorf("address check on: EnsureSchema = %v, want a mismatch saying %q and naming the opt-out", err, want)
	}
	for _, w := range ws {
		w.Close()
	}

	off := clusterConfig(c, fwd...)
	off.Cluster.SkipAddressCheck = true
	ws, err = NewCluster(off)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, w := range ws {
			w.Close()
		}
	}()
	for i, w := range ws {
		if err := w.EnsureSchema(ctx); err != nil {
			t.Fatalf("address check off: shard %d through %s: %v", i, fwd[i], err)
		}
	}
	if got := cquery(t, c, 1, "SELECT engine FROM system.tables WHERE database = 'default' AND name = 'flows_local'"); got != "MergeTree" {
		t.Errorf("shard 1 local table through the forward: engine %q", got)
	}
	// The shape is still checked: one forwarded shard of two is refused.
	short := clusterConfig(c, fwd[0])
	short.Cluster.SkipAddressCheck = true
	ws2, err := NewCluster(short)
	if err != nil {
		t.Fatal(err)
	}
	defer ws2[0].Close()
	if err := ws2[0].EnsureSchema(ctx); !IsClusterMismatch(err) || !strings.Contains(err.Error(), "the server defines 2 shards, cluster.shards lists 1") {
		t.Errorf("address check off, one shard of two: EnsureSchema = %v, want a count mismatch", err)
	}
}
