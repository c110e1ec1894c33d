//go:build integration

package mirror

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReviewAutoOnOldKernelAdoptsOwnTCFilters: the package says a
// restarted agent adopts its tc filters on interfaces that stay mirrored
// with tc ("no gap in the copy across an agent restart"). With the
// default mechanism, auto, on a kernel without TCX (before 6.6: every
// restart there uses tc), the first Reconcile's scan runs while the
// mechanism is still "auto", so it deletes the previous run's live
// filters as stale (a gap in the copy, flowlens_mirror_stale_removed_total
// counting them) and installs them again.
func TestReviewAutoOnOldKernelAdoptsOwnTCFilters(t *testing.T) {
	e := newEnv(t)
	noTCX := func(int, ebpf.AttachType) (link.Link, error) {
		return nil, fmt.Errorf("attach tcx: %w", ebpf.ErrNotSupported)
	}
	want := []netip.Addr{e.a.IPv4}
	m1, err := New(Config{NetnsPath: e.node.NetnsPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m1.attachTCX = noTCX
	if err := m1.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, e.a.HostVeth, MechanismTC, 1)
	// The agent dies (its filters stay) and comes back, auto again.
	m2, err := New(Config{NetnsPath: e.node.NetnsPath}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m2.Close() })
	m2.attachTCX = noTCX
	if err := m2.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, e.a.HostVeth, MechanismTC, 1)
	if got := value(m2.metrics.staleRemoved); got != 0 {
		t.Errorf("auto on a kernel without TCX: the restarted mirror removed %v of its own live tc filters as stale (then re-added them: a gap in the copy); want them adopted", got)
	}
}
