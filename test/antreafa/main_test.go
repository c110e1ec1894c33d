//go:build integration && antreafa

// Package antreafa_test checks flowlens-agent's export.collectorKind
// against Antrea's own Flow Aggregator: two real agents (simulated nodes in
// network namespaces, real conntrack) export one inter-node connection to
// the real flow-aggregator binary (built by
// hack/build-antrea-flow-aggregator.sh), which runs against a real
// kube-apiserver (test/kubeapi) and exports its aggregated records over
// IPFIX to a collector of the test. See docs/antrea-compatibility.md.
//
// It has its own build tag on top of integration: the aggregator can only
// be built from git checkouts of Antrea (the module proxy refuses antrea.io
// modules), which a fresh machine does not have:
//
//	go test -tags 'integration antreafa' -count=1 -v ./test/antreafa
package antreafa_test

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// faVersion is the Antrea release the test runs: the last one whose
// aggregator reads the L7 fields (appProtocolName, httpVals).
const faVersion = "v2.5.3"

var faBin string

// binDir holds what TestMain builds; the agent is built on first use, so
// a test that drives the aggregator without agents (health_integration_test.go)
// does not need it.
var (
	binDir       string
	agentOnce    sync.Once
	agentBinPath string
	agentErr     error
)

// agentBinary builds cmd/flowlens-agent once and returns its path.
func agentBinary(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() { agentBinPath, agentErr = agenttest.BuildAgent(binDir) })
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentBinPath
}

// faBinary is $FLOWLENS_ANTREA_FLOW_AGGREGATOR, else where
// hack/build-antrea-flow-aggregator.sh caches it.
func faBinary() error {
	faBin = os.Getenv("FLOWLENS_ANTREA_FLOW_AGGREGATOR")
	if faBin == "" {
		faBin = "/var/cache/flowlens/antrea-flow-aggregator-" + faVersion
	}
	if _, err := os.Stat(faBin); err != nil {
		return fmt.Errorf("Antrea's flow-aggregator %s (build it with hack/build-antrea-flow-aggregator.sh %s): %w", faBin, faVersion, err)
	}
	return nil
}

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "Antrea Flow Aggregator tests", func(dir string) error {
		binDir = dir
		return nil
	}, netnstest.CheckPrereqs, faBinary)
}
