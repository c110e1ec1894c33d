//go:build integration

package mirror

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReviewLeftoverPairWithOtherPeerName: an agent died without Close
// (its capture pair flc0/flc1 stays, marked with our alias) and comes
// back with another peer name (l7.interface / mirror.peerInterface
// changed in the same helm upgrade that restarted it). The leftover pair
// is ours (alias, veth): New must replace it, as it does when only the
// peer is left. Today New fails ("find capture peer flc7"), and since the
// mirror is fatal the agent crash-loops until someone deletes flc0 by
// hand.
func TestReviewLeftoverPairWithOtherPeerName(t *testing.T) {
	e := newEnv(t)
	old, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: MechanismTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = old // killed: never closed
	m, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: MechanismTC, PeerName: "flc7"}, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("restart with peer flc7 over our own leftover flc0/flc1: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if l := e.link(t, "flc7"); l.Attrs().Alias != CaptureAlias {
		t.Errorf("flc7 alias %q", l.Attrs().Alias)
	}
}
