package clickhouse

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/shard"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/sinktest"
)

func TestCreateDistributedTableSQL(t *testing.T) {
	for _, v := range []Version{{18, 16, 1}, {23, 8, 0}} {
		local := CreateTableSQL("db", "flows_local", v)
		dist := CreateDistributedTableSQL("db", "flows", "my'cluster", "flows_local", v)
		if !strings.HasPrefix(dist, "CREATE TABLE IF NOT EXISTS `db`.`flows` (\n") {
			t.Errorf("%v: distributed DDL head:\n%s", v, dist)
		}
		wantEngine := `ENGINE = Distributed('my\'cluster', 'db', 'flows_local', connectionKey)`
		if !strings.HasSuffix(dist, wantEngine) {
			t.Errorf("%v: distributed DDL does not end in %s:\n%s", v, wantEngine, dist)
		}
		// The same columns, of the same types, as the local table: a
		// Distributed table reads the shards' blocks by name and type.
		cols := func(ddl string) string { return ddl[strings.Index(ddl, "(\n"):strings.Index(ddl, ") ENGINE")] }
		if cols(local) != cols(dist) {
			t.Errorf("%v: column lists differ:\nlocal %s\ndistributed %s", v, cols(local), cols(dist))
		}
		if !strings.Contains(cols(dist), "  "+ShardingKey+" UInt64") {
			t.Errorf("%v: sharding key %s is not a UInt64 column:\n%s", v, ShardingKey, dist)
		}
		if !strings.Contains(local, "ENGINE = MergeTree()") || strings.Contains(local, "Distributed") {
			t.Errorf("%v: local DDL engine:\n%s", v, local)
		}
	}
	if got := CreateDatabaseSQL("f`l"); got != "CREATE DATABASE IF NOT EXISTS `f\\`l`" {
		t.Errorf("CreateDatabaseSQL = %s", got)
	}
}

func noLookup(context.Context, string) ([]string, error) {
	return nil, errors.New("no DNS in unit tests")
}

func TestClusterProblem(t *testing.T) {
	rep := func(shard, weight, replica uint64, host string, port uint64) clusterReplica {
		return clusterReplica{shard: shard, weight: weight, replicaNum: replica, hostName: host, hostAddr: "10.0.0." + host[len(host)-1:], port: port}
	}
	two := []clusterReplica{rep(1, 1, 1, "ch1", 9000), rep(2, 1, 1, "ch2", 9000)}
	for _, tc := range []struct {
		name   string
		shards []string
		got    []clusterReplica
		want   string // "" = matches
	}{
		{"same shards, same order", []string{"ch1:9000", "ch2:9000"}, two, ""},
		{"by address", []string{"10.0.0.1:9000", "10.0.0.2:9000"}, two, ""},
		{"host names ignore case", []string{"CH1:9000", "ch2:9000"}, two, ""},
		{"other order", []string{"ch2:9000", "ch1:9000"}, two, "cluster.shards[0] is ch2:9000, but the server's shard 1 is ch1:9000"},
		{"both lists and the causes", []string{"localhost:19000", "localhost:19001"}, two,
			"the aggregator was given [localhost:19000, localhost:19001], remote_servers (system.clusters) lists [ch1:9000, ch2:9000]. " +
				"Either the shards are listed in another order than remote_servers"},
		{"port-forward hint", []string{"localhost:19000", "localhost:19001"}, two, "port-forward, proxy"},
		{"opt-out named", []string{"localhost:19000", "localhost:19001"}, two, "sinks.clickhouse.cluster.checkShardAddresses: false"},
		{"other port", []string{"ch1:9000", "ch2:9001"}, two, "cluster.shards[1] is ch2:9001, but the server's shard 2 is ch2:9000"},
		{"fewer shards listed", []string{"ch1:9000"}, two, "the server defines 2 shards, cluster.shards lists 1"},
		{"more shards listed", []string{"ch1:9000", "ch2:9000", "ch3:9000"}, two, "defines 2 shards, cluster.shards lists 3"},
		{"no such cluster", []string{"ch1:9000"}, nil, "no such cluster"},
		{"unequal weights", []string{"ch1:9000", "ch2:9000"}, []clusterReplica{rep(1, 1, 1, "ch1", 9000), rep(2, 2, 1, "ch2", 9000)}, "shard 2 (ch2:9000) has weight 2"},
		// Equal but not 1: the Distributed table then picks
		// (key % 4) / 2, not key % 2.
		{"equal weights of 2", []string{"ch1:9000", "ch2:9000"}, []clusterReplica{rep(1, 2, 1, "ch1", 9000), rep(2, 2, 1, "ch2", 9000)}, "shard 1 (ch1:9000) has weight 2: give every shard <weight>1</weight>"},
		{"replicated shard", []string{"ch1:9000", "ch2:9000"}, []clusterReplica{rep(1, 1, 1, "ch1", 9000), rep(1, 1, 2, "ch3", 9000), rep(2, 1, 1, "ch2", 9000)}, "shard 1 has 2 replicas"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := clusterProblem(context.Background(), tc.shards, tc.got, noLookup)
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("problem = %q, want %q", got, tc.want)
			}
		})
	}
	resolves := func(_ context.Context, h string) ([]string, error) {
		if h == "shard-a.example" {
			return []string{"10.0.0.1"}, nil
		}
		return nil, errors.New("unknown")
	}
	if got := clusterProblem(context.Background(), []string{"shard-a.example:9000", "ch2:9000"}, two, resolves); got != "" {
		t.Errorf("a name resolving to the replica's address: %q", got)
	}

	// checkShardAddresses: false (nil lookup) accepts other addresses
	// but still checks the cluster's shape.
	forwarded := []string{"localhost:19000", "localhost:19001"}
	if got := clusterProblem(context.Background(), forwarded, two, nil); got != "" {
		t.Errorf("address check off, forwarded addresses: %q", got)
	}
	for _, tc := range []struct {
		name   string
		shards []string
		got    []clusterReplica
		want   string
	}{
		{"count", forwarded[:1], two, "the server defines 2 shards, cluster.shards lists 1"},
		{"replicas", forwarded, []clusterReplica{rep(1, 1, 1, "ch1", 9000), rep(1, 1, 2, "ch3", 9000), rep(2, 1, 1, "ch2", 9000)}, "shard 1 has 2 replicas"},
		{"weight", forwarded, []clusterReplica{rep(1, 1, 1, "ch1", 9000), rep(2, 3, 1, "ch2", 9000)}, "shard 2 (ch2:9000) has weight 3"},
		{"no cluster", forwarded, nil, "no such cluster"},
	} {
		if got := clusterProblem(context.Background(), tc.shards, tc.got, nil); !strings.Contains(got, tc.want) || tc.want == "" {
			t.Errorf("address check off, %s: problem = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestClusterConfigValidation(t *testing.T) {
	base := func() Config {
		return Config{Aggregator: "a", Cluster: &ClusterConfig{Name: "c", Shards: []string{"h1:9000", "h2:9000"}}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"addr with a cluster", func(c *Config) { c.Addr = "h1:9000" }, "addr: must be empty"},
		{"no name", func(c *Config) { c.Cluster.Name = "" }, "cluster.name"},
		{"no shards", func(c *Config) { c.Cluster.Shards = nil }, "cluster.shards"},
		{"duplicate shard", func(c *Config) { c.Cluster.Shards = []string{"h1:9000", "h1:9000"} }, "cluster.shards[1]: h1:9000 is shards[0]"},
		{"local table is the distributed one", func(c *Config) { c.Cluster.LocalTable = "flows" }, "cluster.localTable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			_, err := NewCluster(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewCluster error %v, want %q", err, tc.want)
			}
		})
	}
	ws, err := NewCluster(base())
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[1].cfg.Addr != "h2:9000" || ws[1].table != "flows_local" || ws[1].shard != 1 ||
		!strings.HasPrefix(ws[1].insertSQL, "INSERT INTO `default`.`flows_local` (") {
		t.Errorf("writers: %d, shard 1 at %s into %s (index %d): %s", len(ws), ws[1].cfg.Addr, ws[1].table, ws[1].shard, ws[1].insertSQL)
	}
	for _, w := range ws {
		_ = w.Close()
	}
	if _, err := New(base()); err == nil {
		t.Error("New accepted a cluster config: one writer cannot serve every shard")
	}
}

type fakeShard struct {
	mu   sync.Mutex
	got  []*correlate.Record
	err  error
	runs int
}

func (f *fakeShard) Put(r *correlate.Record) { f.mu.Lock(); f.got = append(f.got, r); f.mu.Unlock() }
func (f *fakeShard) Run(ctx context.Context) error {
	f.mu.Lock()
	f.runs++
	f.mu.Unlock()
	<-ctx.Done()
	return f.err
}
func (f *fakeShard) Healthy() error { return f.err }

func TestClusterSinkRoutesByConnectionKey(t *testing.T) {
	shards := []*fakeShard{{}, {}, {}}
	cs, err := NewClusterSink(shards)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := sink.LookupColumn(ShardingKey)
	const n = 300
	for i := 0; i < n; i++ {
		r := sinktest.Record(i)
		if i%2 == 1 {
			// The reply direction of the same connection: same shard.
			r.Tuple = r.Tuple.Reverse()
		}
		cs.Put(r)
	}
	total := 0
	for i, s := range shards {
		if len(s.got) == 0 {
			t.Errorf("shard %d got no records out of %d", i, n)
		}
		for _, r := range s.got {
			k := key.Num(r, &sink.Meta{})
			if k != shard.RecordKey(&r.Record) || int(k%3) != i {
				t.Fatalf("record with connectionKey %d (shard.Key %d) on shard %d, want %d", k, shard.RecordKey(&r.Record), i, k%3)
			}
		}
		total += len(s.got)
	}
	if total != n {
		t.Errorf("routed %d records, put %d", total, n)
	}

	if err := cs.Healthy(); err != nil {
		t.Errorf("healthy shards: %v", err)
	}
	shards[1].err = errors.New("shard 1 down")
	if err := cs.Healthy(); err == nil || !strings.Contains(err.Error(), "shard 1 down") {
		t.Errorf("Healthy with a failing shard = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cs.Run(ctx); err == nil || !strings.Contains(err.Error(), "shard 1: shard 1 down") {
		t.Errorf("Run = %v, want shard 1's error", err)
	}
	for i, s := range shards {
		if s.runs != 1 {
			t.Errorf("shard %d run %d times", i, s.runs)
		}
	}
	if _, err := NewClusterSink([]*fakeShard{}); err == nil {
		t.Error("a cluster sink without shards")
	}
}

func TestDistributedProblem(t *testing.T) {
	for _, tc := range []struct {
		engine, full string
		want         string // "" = ours
	}{
		{"Distributed", "Distributed('flowlens', 'default', 'flows_local', connectionKey)", ""},
		{"Distributed", "Distributed(flowlens, default, flows_local, connectionKey)", ""},
		{"Distributed", "Distributed(`flowlens`, \"default\", 'flows_local', connectionKey)", ""},
		{"MergeTree", "MergeTree() PARTITION BY toYYYYMMDD(timeInserted) ORDER BY (timeInserted, flowEndSeconds) SETTINGS index_granularity = 8192", "its engine is MergeTree, not Distributed"},
		{"Distributed", "Distributed('other', 'default', 'flows_local', connectionKey)", `its cluster is "other"`},
		{"Distributed", "Distributed('flowlens', 'db2', 'flows_local', connectionKey)", `its database is "db2"`},
		{"Distributed", "Distributed('flowlens', 'default', 'flows', connectionKey)", `its local table is "flows"`},
		{"Distributed", "Distributed('flowlens', 'default', 'flows_local', rand())", `its sharding key is "rand()"`},
		{"Distributed", "Distributed('flowlens', 'default', 'flows_local', intHash64(connectionKey))", `its sharding key is "intHash64(connectionKey)"`},
		{"Distributed", "Distributed('flowlens', 'default', 'flows_local')", "is not Distributed(cluster, database, table, connectionKey)"},
		{"Distributed", "Distributed('flowlens, 'default', 'flows_local', connectionKey)", "is not Distributed("},
		{"Distributed", "Distributed('flow,lens', 'default', 'flows_local', connectionKey)", `its cluster is "flow,lens"`},
	} {
		got := distributedProblem(tc.engine, tc.full, "flowlens", "default", "flows_local")
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("%s: problem = %q, want %q", tc.full, got, tc.want)
		}
	}
}
