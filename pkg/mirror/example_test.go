package mirror_test

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/mirror"
)

// The agent owns one Mirror for the node: it reconciles the opted-in local
// pods whenever they change and on a timer, and closes it on shutdown.
// Suricata reads af-packet on "flc1". (Needs root; not run as a test.)
func Example() {
	m, err := mirror.New(mirror.Config{NetnsPath: "/run/netns/node"}, prometheus.NewRegistry())
	if err != nil {
		klog.ErrorS(err, "Traffic mirror unavailable")
		return
	}
	defer m.Close()
	localPods := func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("10.244.0.2")} }
	optedIn := func(netip.Addr) bool { return true } // from the l7-export annotation, any value
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for range 3 {
		if err := m.Reconcile(mirror.Select(localPods(), optedIn)); err != nil {
			klog.ErrorS(err, "Mirror reconcile")
		}
		<-tick.C
	}
}
