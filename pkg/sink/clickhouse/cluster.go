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
// of equal weight makes, so rows inserted directly and rows inserted
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
// cfg.Cluster.Shards: same number of shards, shard i+1 (ClickHouse counts
// from 1) is Shards[i] and has a single replica, and every weight is
// equal (unequal weights would make the Distributed table's choice differ
// from ShardFor).
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
	if problem := clusterProblem(ctx, cl.Shards, got, net.DefaultResolver.LookupHost); problem != "" {
		return sink.Permanent(&ClusterMismatchError{Addr: w.cfg.Addr, Cluster: cl.Name, Problem: problem})
	}
	return nil
}

// clusterProblem describes how the server's replicas (ordered by shard)
// differ from shards, or is "".
func clusterProblem(ctx context.Context, shards []string, got []clusterReplica, lookup func(context.Context, string) ([]string, error)) string {
	if len(got) == 0 {
		return "the server has no such cluster: add it to remote_servers on every shard"
	}
	byShard := map[uint64][]clusterReplica{}
	var weights []uint64
	for _, r := range got {
		if len(byShard[r.shard]) == 0 {
			weights = append(weights, r.weight)
		}
		byShard[r.shard] = append(byShard[r.shard], r)
	}
	if len(byShard) != len(shards) {
		return fmt.Sprintf("the server defines %d shards, cluster.shards lists %d", len(byShard), len(shards))
	}
	for _, wt := range weights[1:] {
		if wt != weights[0] {
			return fmt.Sprintf("shard weights differ (%v): give every shard the same weight, so the Distributed table picks connectionKey %% %d as flowlens does", weights, len(shards))
		}
	}
	for i, addr := range shards {
		rs := byShard[uint64(i+1)]
		if len(rs) == 0 {
			return fmt.Sprintf("the server has no shard number %d", i+1)
		}
		if len(rs) > 1 {
			return fmt.Sprintf("shard %d has %d replicas: flowlens writes non-replicated shards (one replica each)", i+1, len(rs))
		}
		r := rs[0]
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Sprintf("cluster.shards[%d] %q: %v", i, addr, err)
		}
		if strconv.FormatUint(r.port, 10) != port || !sameHost(ctx, host, r.hostName, r.hostAddr, lookup) {
			return fmt.Sprintf("cluster.shards[%d] is %s, but the server's shard %d is %s:%d (list the shards in remote_servers order)",
				i, addr, i+1, r.hostName, r.port)
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
