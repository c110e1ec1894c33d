//go:build integration

// Package shardinge2e_test runs flowlens scaled out, for real: four
// simulated nodes (network namespaces, real conntrack) each with its own
// flowlens-agent binary, three flowlens-aggregator replicas (write-ahead
// log on) that the agents pick per connection (pkg/shard), and two
// clickhouse-server processes forming one cluster, the aggregators writing
// each row to the shard of its connection and reading through the
// Distributed table. Assertions are made on the stored rows, per shard, and
// on every process's /metrics. The package also holds the scale-out
// benchmark (make bench) whose figures docs/sizing.md quotes.
package shardinge2e_test

import (
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "sharding e2e tests", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		aggregatorBin, err = agenttest.BuildAggregator(dir)
		return err
	}, netnstest.CheckPrereqs)
}
