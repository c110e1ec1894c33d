package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
)

// ShardFor is the shard, of n, that a row with this connectionKey goes to:
// the choice a Distributed table sharded by connectionKey over n shards
// of weight 1 makes, so rows inserted directly and rows inserted
// through the Distributed table land alike.
func ShardFor(connectionKey uint64, n int) int {
	return int(connectionKey % uint64(n))
}

// ClusterMismatchError says a server's remote_servers definition of the
// cluster is not the shard list the writer was given: rows would be
// placed on other shards than the Distributed table expects, or queries
// would miss shards. It is permanent (an operator must fix one of the
// two configurations).
type ClusterMismatchError struct {
	Addr    string // the server whose definition was read
	Cluster string
	Problem string
}

func (e *ClusterMismatchError) Error() string {
	return fmt.Sprintf("cluster %q as defined on %s (remote_servers, system.clusters) does not match cluster.shards: %s",
		e.Cluster, e.Addr, e.Problem)
}

// IsClusterMismatch reports whether err, or one it wraps, is a
// ClusterMismatchError.
func IsClusterMismatch(err error) bool {
	var m *ClusterMismatchError
	return errors.As(err, &m)
}

// clusterReplica is one row of system.clusters.
type clusterReplica struct {
	shard, weight, replicaNum uint64
	hostName, hostAddr        string
	port                      uint64
}

// checkCluster compares the server's definition of the cluster with
// cfg.Cluster.Shards: same number of shards, each with a single replica
// of weight 1, and (unless SkipAddressCheck) shard i+1 (ClickHouse counts
// from 1) is Shards[i].
func (w *Writer) checkCluster(ctx context.Context) error {
	cl := w.cfg.Cluster
	rows, err := w.conn.Query(ctx, "SELECT toUInt64(shard_num), toUInt64(shard_weight), toUInt64(replica_num), host_name, host_address, toUInt64(port) "+
		"FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cl.Name)
	if err != nil {
		return classify(fmt.Errorf("read system.clusters on %s: %w", w.cfg.Addr, err))
	}
	defer rows.Close()
	var got []clusterReplica
	for rows.Next() {
		var r clusterReplica
		if err := rows.Scan(&r.shard, &r.weight, &r.replicaNum, &r.hostName, &r.hostAddr, &r.port); err != nil {
			return classify(fmt.Errorf("read system.clusters on %s: %w", w.cfg.Addr, err))
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return classify(fmt.Errorf("read system.clusters on %s: %w", w.cfg.Addr, err))
	}
	lookup := net.DefaultResolver.LookupHost
	if cl.SkipAddressCheck {
		lookup = nil
	}
	if problem := clusterProblem(ctx, cl.Shards, got, lookup); problem != "" {
		return sink.Permanent(&ClusterMismatchError{Addr: w.cfg.Addr, Cluster: cl.Name, Problem: problem})
	}
	return nil
}

// clusterProblem describes how the server's replicas (ordered by shard)
// differ from shards, or is "". A nil lookup skips matching the
// addresses (checkShardAddresses: false), not the shape of the cluster.
func clusterProblem(ctx context.Context, shards []string, got []clusterReplica, lookup func(context.Context, string) ([]string, error)) string {
	if len(got) == 0 {
		return "the server has no such cluster: add it to remote_servers on every shard"
	}
	byShard := map[uint64][]clusterReplica{}
	for _, r := range got {
		byShard[r.shard] = append(byShard[r.shard], r)
	}
	if len(byShard) != len(shards) {
		return fmt.Sprintf("the server defines %d shards, cluster.shards lists %d", len(byShard), len(shards))
	}
	for i := range shards {
		rs := byShard[uint64(i+1)]
		if len(rs) == 0 {
			return fmt.Sprintf("the server has no shard number %d", i+1)
		}
		if len(rs) > 1 {
			return fmt.Sprintf("shard %d has %d replicas: flowlens writes non-replicated shards (one replica each)", i+1, len(rs))
		}
		// A Distributed table maps key % Σweights through weight slots;
		// only with every weight 1 is that key % n, ShardFor's choice
		// (equal weights of 2 already place rows elsewhere).
		if rs[0].weight != 1 {
			return fmt.Sprintf("shard %d (%s:%d) has weight %d: give every shard <weight>1</weight>, so the Distributed table picks connectionKey %% %d as flowlens does",
				i+1, rs[0].hostName, rs[0].port, rs[0].weight, len(shards))
		}
	}
	if lookup == nil {
		return ""
	}
	for i, addr := range shards {
		r := byShard[uint64(i+1)][0]
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Sprintf("cluster.shards[%d] %q: %v", i, addr, err)
		}
		if strconv.FormatUint(r.port, 10) != port || !sameHost(ctx, host, r.hostName, r.hostAddr, lookup) {
			server := make([]string, len(shards))
			for k := range shards {
				s := byShard[uint64(k+1)][0]
				server[k] = net.JoinHostPort(s.hostName, strconv.FormatUint(s.port, 10))
			}
			return fmt.Sprintf("cluster.shards[%d] is %s, but the server's shard %d is %s:%d; "+
				"the aggregator was given [%s], remote_servers (system.clusters) lists [%s]. "+
				"Either the shards are listed in another order than remote_servers (list them in its order), "+
				"or the aggregator reaches them through other addresses (port-forward, proxy, NAT, another DNS name): "+
				"then set sinks.clickhouse.cluster.checkShardAddresses: false, making sure shards[i] is the server of remote_servers shard i+1",
				i, addr, i+1, r.hostName, r.port, strings.Join(shards, ", "), strings.Join(server, ", "))
		}
	}
	return ""
}

// sameHost reports whether host (from the flowlens config) names the
// replica: as written in remote_servers, as its address, or by resolving
// to that address.
func sameHost(ctx context.Context, host, name, addr string, lookup func(context.Context, string) ([]string, error)) bool {
	if strings.EqualFold(host, name) || host == addr {
		return true
	}
	ips, err := lookup(ctx, host)
	if err != nil {
		return false
	}
	for _, ip := range ips {
		if ip == addr {
			return true
		}
	}
	return false
}

// sinkDestination is one shard's sink.
type sinkDestination interface {
	Put(r *correlate.Record)
	Run(ctx context.Context) error
	Healthy() error
}

// ClusterSink hands each record to the sink of its shard (a sink per
// NewCluster writer, in the same order): each shard has its own queue,
// retries, spool and health, so a shard that is down holds back only its
// own rows. It is a sink.Destination.
type ClusterSink struct {
	shards []sinkDestination
	key    sink.Column
}

var _ sink.Destination = (*ClusterSink)(nil)

// NewClusterSink routes to shards[ShardFor(connectionKey, len(shards))].
func NewClusterSink[S sinkDestination](shards []S) (*ClusterSink, error) {
	if len(shards) == 0 {
		return nil, errors.New("cluster sink: no shards")
	}
	key, ok := sink.LookupColumn(ShardingKey)
	if !ok || !key.Type.Numeric() {
		return nil, fmt.Errorf("cluster sink: no numeric column %s to shard by", ShardingKey)
	}
	c := &ClusterSink{key: key}
	for _, s := range shards {
		c.shards = append(c.shards, s)
	}
	return c, nil
}

// Shard is the index of the shard r goes to: the same connectionKey
// value the row stores.
func (c *ClusterSink) Shard(r *correlate.Record) int {
	return ShardFor(c.key.Num(r, &sink.Meta{}), len(c.shards))
}

// Put queues r on its shard's sink (waiting, as Sink.Put does, while that
// queue is full).
func (c *ClusterSink) Put(r *correlate.Record) { c.shards[c.Shard(r)].Put(r) }

// Run runs every shard's sink until ctx ends and they have flushed.
func (c *ClusterSink) Run(ctx context.Context) error {
	errs := make([]error, len(c.shards))
	var wg sync.WaitGroup
	for i, s := range c.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx); err != nil {
				errs[i] = fmt.Errorf("shard %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Healthy joins the shards' Healthy errors (each names its sink).
func (c *ClusterSink) Healthy() error {
	var errs []error
	for _, s := range c.shards {
		if err := s.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ForeignTableError says a table flowlens would create in cluster mode
// already exists as something else: rows would go to the shards' local
// tables while queries of that table miss them. It is permanent: an
// operator must move the table away or pick another name.
type ForeignTableError struct {
	Addr    string // the shard
	Table   string // database.table
	Problem string
}

func (e *ForeignTableError) Error() string {
	return fmt.Sprintf("table %s on %s is not the one flowlens uses in cluster mode: %s", e.Table, e.Addr, e.Problem)
}

// IsForeignTable reports whether err, or one it wraps, is a
// ForeignTableError.
func IsForeignTable(err error) bool {
	var f *ForeignTableError
	return errors.As(err, &f)
}

// tableEngine is the engine of database.table on the writer's server
// (engine_full carries the parameters; 18.16 has it), or "" when there
// is no such table.
func (w *Writer) tableEngine(ctx context.Context, table string) (engine, full string, err error) {
	rows, err := w.conn.Query(ctx, "SELECT engine, engine_full FROM system.tables WHERE database = ? AND name = ?", w.cfg.Database, table)
	if err != nil {
		return "", "", fmt.Errorf("read the engine of %s.%s on %s: %w", w.cfg.Database, table, w.cfg.Addr, err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(&engine, &full); err != nil {
			return "", "", fmt.Errorf("read the engine of %s.%s on %s: %w", w.cfg.Database, table, w.cfg.Addr, err)
		}
	}
	if err := rows.Err(); err != nil {
		return "", "", fmt.Errorf("read the engine of %s.%s on %s: %w", w.cfg.Database, table, w.cfg.Addr, err)
	}
	return engine, full, nil
}

// checkClusterTables refuses existing tables that are not what cluster
// mode creates: CREATE TABLE IF NOT EXISTS and the column check would
// take them as ours. The typical case is a single server's MergeTree
// `flows` on a server that became shard 0: new rows would go to
// flows_local while `flows` there kept showing only the old ones.
func (w *Writer) checkClusterTables(ctx context.Context) error {
	cl := w.cfg.Cluster
	engine, _, err := w.tableEngine(ctx, w.table)
	if err != nil {
		return classify(err)
	}
	if engine != "" && !strings.HasSuffix(engine, "MergeTree") {
		return sink.Permanent(&ForeignTableError{Addr: w.cfg.Addr, Table: w.cfg.Database + "." + w.table,
			Problem: fmt.Sprintf("its engine is %s, the shard's local table (sinks.clickhouse.cluster.localTable) must be a MergeTree: "+
				"rename or drop it, or set another localTable", engine)})
	}
	engine, full, err := w.tableEngine(ctx, w.cfg.Table)
	if err != nil {
		return classify(err)
	}
	if engine == "" {
		return nil
	}
	if problem := distributedProblem(engine, full, cl.Name, w.cfg.Database, w.table); problem != "" {
		return sink.Permanent(&ForeignTableError{Addr: w.cfg.Addr, Table: w.cfg.Database + "." + w.cfg.Table,
			Problem: problem + fmt.Sprintf("; in cluster mode sinks.clickhouse.table must name the Distributed table over sinks.clickhouse.cluster %q. "+
				"If it holds a single server's rows, move it away on this server (RENAME TABLE %s.%s TO %s.%s_single; its rows stay queryable there "+
				"and can be copied into the cluster, see docs/design.md \"From one server to a cluster\"), or choose another sinks.clickhouse.table",
				cl.Name, quoteIdent(w.cfg.Database), quoteIdent(w.cfg.Table), quoteIdent(w.cfg.Database), w.cfg.Table)})
	}
	return nil
}

// distributedProblem says how a table with engine and engine_full full
// differs from Distributed(cluster, database, local, ShardingKey), or is
// "".
func distributedProblem(engine, full, cluster, database, local string) string {
	if engine != "Distributed" {
		return fmt.Sprintf("its engine is %s, not Distributed", engine)
	}
	args, ok := engineArgs(full)
	if !ok || len(args) != 4 {
		return fmt.Sprintf("its engine %q is not Distributed(cluster, database, table, %s)", full, ShardingKey)
	}
	want := []string{cluster, database, local, ShardingKey}
	names := []string{"cluster", "database", "local table", "sharding key"}
	for i, a := range args {
		if a != want[i] {
			return fmt.Sprintf("it is %s: its %s is %q, flowlens writes with %q", full, names[i], a, want[i])
		}
	}
	return ""
}

// engineArgs splits "Name(a, 'b', `c`, expr)" into its arguments,
// unquoted (expressions keep their text, spaces removed).
func engineArgs(full string) ([]string, bool) {
	open := strings.IndexByte(full, '(')
	end := strings.LastIndexByte(full, ')')
	if open < 0 || end < open {
		return nil, false
	}
	s := full[open+1 : end]
	var args []string
	var cur strings.Builder
	depth := 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			} else if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '`' || c == '"':
			quote = c
		case c == '(':
			depth++
			cur.WriteByte(c)
		case c == ')':
			depth--
			cur.WriteByte(c)
		case c == ',' && depth == 0:
			args = append(args, cur.String())
			cur.Reset()
		case c == ' ' || c == '\t' || c == '\n':
		default:
			cur.WriteByte(c)
		}
	}
	if quote != 0 || depth != 0 {
		return nil, false
	}
	return append(args, cur.String()), true
}
