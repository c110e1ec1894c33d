package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
)

// Where the program cannot load, auto counts with conntrack (and says so
// in flowlens_agent_counter_source), ebpf refuses to start naming the
// setting and the kernel's reason, conntrack does not even try.
func TestCounterSourceFallsBackOnlyWhenAllowed(t *testing.T) {
	loadErr := errors.New("load flow_from_pod: permission denied")
	for _, tc := range []struct {
		source     string
		events     bool
		wantErr    bool
		wantSource string
		wantLoads  int
	}{
		{agentconfig.CountersAuto, true, false, "conntrack", 1},
		{agentconfig.CountersEBPF, true, true, "", 1},
		{agentconfig.CountersConntrack, true, false, "conntrack", 0},
		{agentconfig.CountersAuto, false, false, "conntrack", 0},
	} {
		t.Run(tc.source, func(t *testing.T) {
			cfg := agentconfig.Default()
			cfg.Counters.Source = tc.source
			cfg.Conntrack.Events = &tc.events
			reg := prometheus.NewRegistry()
			loads := 0
			b, err := newCounterSource(cfg, reg, func(agentconfig.Config, prometheus.Registerer) (*bpfStage, error) {
				loads++
				return nil, loadErr
			})
			if loads != tc.wantLoads {
				t.Errorf("%d loads, want %d", loads, tc.wantLoads)
			}
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "counters.source") || !errors.Is(err, loadErr) {
					t.Fatalf("error %v, want one naming counters.source and wrapping the load error", err)
				}
				return
			}
			if err != nil || b != nil {
				t.Fatalf("got stage %v, error %v; want conntrack counting", b, err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, mf := range mfs {
				if mf.GetName() != "flowlens_agent_counter_source" {
					continue
				}
				for _, m := range mf.GetMetric() {
					if m.GetGauge().GetValue() == 1 {
						got = append(got, m.GetLabel()[0].GetValue())
					}
				}
			}
			if len(got) != 1 || got[0] != tc.wantSource {
				t.Errorf("flowlens_agent_counter_source at 1 for %v, want [%s]", got, tc.wantSource)
			}
		})
	}
}
