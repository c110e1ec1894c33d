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
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// faVersion is the Antrea release the test runs: the last one whose
// aggregator reads the L7 fields (appProtocolName, httpVals).
const faVersion = "v2.5.3"

var agentBin, faBin string

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
	agenttest.RunMain(m, "Antrea Flow Aggregator tests", func(dir string) (err error) {
		agentBin, err = agenttest.BuildAgent(dir)
		return err
	}, netnstest.CheckPrereqs, faBinary)
}
