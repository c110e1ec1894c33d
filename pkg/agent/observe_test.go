package agent

import (
	"errors"
	"strings"
	"testing"

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
