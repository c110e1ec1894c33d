//go:build integration

// Package e2e_test runs the real flowlens-agent binary end to end: a real
// etcd + kube-apiserver holding the cluster's objects, the agent bound to
// its ServiceAccount with exactly build/rbac/agent.yaml's RBAC, simulated
// nodes (network namespaces, real conntrack, nftables DNAT for Services) and
// a real IPFIX collector checking what arrives, or the real
// flowlens-aggregator writing a real clickhouse-server.
package e2e_test

import (
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "e2e tests", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		aggregatorBin, err = agenttest.BuildAggregator(dir)
		return err
	}, netnstest.CheckPrereqs)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// waitEndOfFlow waits for the end-of-flow record of the TCP connection from src.
func waitEndOfFlow(t *testing.T, col *agenttest.Collector, src netip.AddrPort, within time.Duration) agenttest.Arrival {
	t.Helper()
	recs := col.WaitFor(t, src, flow.ProtoTCP, flow.EndOfFlow, within)
	return recs[len(recs)-1]
}
