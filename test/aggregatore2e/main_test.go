//go:build integration

// Package aggregatore2e_test runs the whole pipeline for real: two
// flowlens-agent binaries, one per simulated node (network namespaces
// joined like a flat cluster network, real conntrack, nftables DNAT for a
// Service), both exporting IPFIX to one flowlens-aggregator binary that
// correlates the two halves of inter-node connections and writes a real
// clickhouse-server (Debian's 18.16). Assertions are made on the stored
// rows and on the aggregator's /metrics.
package aggregatore2e_test

import (
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "aggregator e2e tests", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		aggregatorBin, err = agenttest.BuildAggregator(dir)
		return err
	}, netnstest.CheckPrereqs)
}
