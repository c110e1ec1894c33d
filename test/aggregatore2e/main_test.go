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
	"fmt"
	"os"
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	if err := netnstest.CheckPrereqs(); err != nil {
		fmt.Fprintf(os.Stderr, "aggregator e2e tests need: %v\n", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "flowlens-aggregatore2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if agentBin, err = agenttest.BuildAgent(dir); err == nil {
		aggregatorBin, err = agenttest.BuildAggregator(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
