package agentconfig

import (
	"reflect"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestObserveDefaultsAreAutoAndBounded(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Observe
	if o.TCPHealth.Mode != ObserveAuto || o.PacketDrops.Mode != ObserveAuto || o.DNSNames.Mode != ObserveAuto {
		t.Errorf("modes %q %q %q, want auto", o.TCPHealth.Mode, o.PacketDrops.Mode, o.DNSNames.Mode)
	}
	if o.DNSNames.MinTTL.D() != 30*time.Second || o.PacketDrops.RatePerCPU <= 0 || o.TCPHealth.MapEntries <= 0 {
		t.Errorf("defaults %+v", o)
	}
	cfg, err = Load(writeConfig(t, "nodeName: n\nobserve:\n  dnsNames:\n    mode: OFF\n"))
	if err != nil || cfg.Observe.DNSNames.Mode != ObserveOff {
		t.Errorf("mode OFF: %q, %v", cfg.Observe.DNSNames.Mode, err)
	}
}

func TestBadObserveValuesNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		fields     []string
	}{
		{"mode", "observe:\n  tcpHealth:\n    mode: yes\n", []string{"observe.tcpHealth.mode"}},
		{"rate", "observe:\n  packetDrops:\n    ratePerCPU: 0\n", []string{"observe.packetDrops.ratePerCPU"}},
		{"ttl order", "observe:\n  dnsNames:\n    minTTL: 2h\n", []string{"observe.dnsNames.maxTTL"}},
		{"entries", "observe:\n  dnsNames:\n    cacheEntries: -1\n", []string{"observe.dnsNames.cacheEntries"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
			if got := confutil.Fields(err); !reflect.DeepEqual(got, tc.fields) {
				t.Fatalf("fields %v, want %v (err %v)", got, tc.fields, err)
			}
		})
	}
}
