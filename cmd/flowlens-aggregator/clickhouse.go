package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
)

// addClickHouseCluster adds the ClickHouse sink of a sharded cluster: a
// sink per shard (named clickhouse-shard<i>, each with the configured
// queue, retries and its own spool file <spool.path>.shard<i>), behind one
// destination that routes each record to its shard. All of them commit
// to the write-ahead log as the one "clickhouse" sink (each row goes to
// exactly one shard), their intents naming the shard.
func (a *aggregator) addClickHouseCluster(s aggregatorconfig.ClickHouseSink, password string) error {
	cl := s.Cluster
	ws, err := clickhouse.NewCluster(clickhouse.Config{
		Database: s.Database, Table: s.Table, Username: s.Username, Password: password,
		Aggregator: a.cfg.AggregatorID, DialTimeout: s.DialTimeout.D(), Compress: s.Compress,
		Cluster: &clickhouse.ClusterConfig{Name: cl.Name, Shards: cl.Shards, LocalTable: cl.LocalTable, SkipAddressCheck: !cl.CheckAddresses()},
		Rollup:  rollupConfig(s),
	})
	if err != nil {
		return err
	}
	closeAll := func() {
		for _, w := range ws {
			_ = w.Close()
		}
	}
	// As for a single server: create or migrate now so problems show at
	// start; a shard that is down is not fatal (its sink buffers), but a
	// cluster definition that disagrees with the shard list, or a table
	// of that name that is not the cluster's, is.
	errs := make([]error, len(ws))
	ctx, cancel := context.WithTimeout(context.Background(), max(s.DialTimeout.D(), 5*time.Second)+5*time.Second)
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.EnsureSchema(ctx)
		}()
	}
	wg.Wait()
	cancel()
	for i, err := range errs {
		switch {
		case err == nil:
		case clickhouse.IsClusterMismatch(err), clickhouse.IsForeignTable(err):
			closeAll()
			return fmt.Errorf("shards[%d] %s: %w", i, cl.Shards[i], err)
		default:
			klog.ErrorS(err, "ClickHouse shard not ready at start; buffering its rows until it is", "shard", i, "addr", cl.Shards[i])
		}
	}
	pos := len(a.sinks)
	shards := make([]*sink.Sink, len(ws))
	for i, w := range ws {
		name := fmt.Sprintf("clickhouse-shard%d", i)
		q := s.Queue
		if q.Spool.Path != "" {
			q.Spool.Path = fmt.Sprintf("%s.shard%d", q.Spool.Path, i)
		}
		if shards[i], err = sink.New(sinkConfig(a.cfg, name, a.wal.wrapShard("clickhouse", w, pos, i), q), a.reg); err != nil {
			closeAll()
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	cs, err := clickhouse.NewClusterSink(shards)
	if err != nil {
		closeAll()
		return err
	}
	a.sinks = append(a.sinks, cs)
	return nil
}

// rollupConfig is the service-map rollup the configuration asks for (nil:
// none).
func rollupConfig(s aggregatorconfig.ClickHouseSink) *clickhouse.RollupConfig {
	if !s.Rollup.Enabled {
		return nil
	}
	return &clickhouse.RollupConfig{Retention: s.Rollup.Retention.D()}
}
