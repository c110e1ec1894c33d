//go:build integration

package theia

import (
	"testing"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "Theia dashboard tests", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		aggregatorBin, err = agenttest.BuildAggregator(dir)
		return err
	}, netnstest.CheckPrereqs)
}
