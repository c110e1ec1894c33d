//go:build integration

package mirror

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReviewReconcileRepairsRemovedMirror: Reconcile "installs what is
// missing" and the agent calls it every reconcileInterval. When our
// mirror on a wanted pod's interface disappears behind our back (a CNI
// re-creating the interface's clsact qdisc, an operator's `tc qdisc del`,
// `bpftool link detach` of our TCX link), the periodic Reconcile must put
// it back; otherwise the pod's traffic never reaches Suricata again while
// flowlens_mirror_interfaces still counts it.
func TestReviewReconcileRepairsRemovedMirror(t *testing.T) {
	for _, mech := range []string{MechanismTC, MechanismTCX} {
		t.Run(mech, func(t *testing.T) {
			e := newEnv(t)
			m, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: mech}, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m.Close() })
			want := []netip.Addr{e.a.IPv4}
			if err := m.Reconcile(want); err != nil {
				t.Fatal(err)
			}
			e.expectMirrored(t, e.a.HostVeth, mech, 1)

			// Somebody else removes what we attached.
			switch mech {
			case MechanismTC:
				if out, err := e.node.Exec("tc", "qdisc", "del", "dev", e.a.HostVeth, "clsact"); err != nil {
					t.Fatalf("tc qdisc del: %v %s", err, out)
				}
			case MechanismTCX:
				for _, mi := range m.ifs {
					for _, l := range mi.links {
						info, err := l.Info()
						if err != nil {
							t.Fatal(err)
						}
						// What `bpftool link detach id N` does.
						if out, err := e.node.Exec("bpftool", "link", "detach", "id", fmt.Sprint(info.ID)); err != nil {
							t.Fatalf("bpftool link detach: %v %s", err, out)
						}
					}
				}
			}
			e.expectMirrored(t, e.a.HostVeth, mech, 0)

			// The periodic reconciliations.
			for i := 0; i < 3; i++ {
				if err := m.Reconcile(want); err != nil {
					t.Fatal(err)
				}
			}
			tc, tcx, _ := e.ourArtifacts(t, e.a.HostVeth)
			if (mech == MechanismTC && tc != [2]int{1, 1}) || (mech == MechanismTCX && tcx != [2]int{1, 1}) {
				t.Errorf("%s: after 3 Reconciles our tc filters %v, TCX programs %v on %s, want one mirror per hook; flowlens_mirror_interfaces = %v",
					mech, tc, tcx, e.a.HostVeth, value(m.metrics.mirrored))
			}
		})
	}
}
