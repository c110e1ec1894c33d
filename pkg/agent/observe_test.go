package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
)

type fakeObserver struct{}

func TestLoadObserverFollowsItsMode(t *testing.T) {
	refused := errors.New("load tp_btf/tcp_probe: permission denied")
	for _, tc := range []struct {
		mode     string
		err      error
		loaded   bool
		fatal    string
		wantCall bool
	}{
		{agentconfig.ObserveOff, nil, false, "", false},
		{agentconfig.ObserveAuto, nil, true, "", true},
		{agentconfig.ObserveAuto, refused, false, "", true},
		{agentconfig.ObserveOn, nil, true, "", true},
		{agentconfig.ObserveOn, refused, false, "observe.tcpHealth.mode on: load tp_btf/tcp_probe", true},
	} {
		called := false
		got, err := loadObserver(tc.mode, "observe.tcpHealth", func() (*fakeObserver, error) {
			called = true
			if tc.err != nil {
				return nil, tc.err
			}
			return &fakeObserver{}, nil
		})
		if called != tc.wantCall || (got != nil) != tc.loaded {
			t.Errorf("mode %s, load error %v: called %v, loaded %v", tc.mode, tc.err, called, got != nil)
		}
		switch {
		case tc.fatal == "" && err != nil:
			t.Errorf("mode %s, load error %v: %v, want the agent to run without it", tc.mode, tc.err, err)
		case tc.fatal != "" && (err == nil || !strings.Contains(err.Error(), tc.fatal)):
			t.Errorf("mode %s: error %v, want one saying %q", tc.mode, err, tc.fatal)
		}
	}
}

// With export.healthElements off nothing carries what the observers add:
// auto loads none of them.
func TestObserversInAutoModeNeedHealthElements(t *testing.T) {
	cfg := loadConfig(t, "nodeName: node-a\nconntrack:\n  events: false\nexport:\n  healthElements: false\n")
	cfg.Observe.TCPHealth.Mode, cfg.Observe.PacketDrops.Mode, cfg.Observe.DNSNames.Mode = agentconfig.ObserveAuto, agentconfig.ObserveAuto, agentconfig.ObserveAuto
	s, err := newObserveStage(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if len(s.enrichers) != 0 || s.names != nil {
		t.Errorf("observers loaded with export.healthElements off: %d enrichers", len(s.enrichers))
	}
}
