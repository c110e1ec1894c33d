//go:build integration

package mirror

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestRemoveLeftovers: a killed mirror's tc filters and capture pair
// (also one with other names: a previous configuration) are removed, with
// the count; a foreign filter and program on the same interface, and an
// interface that is not ours, stay. A second call finds nothing.
func TestRemoveLeftovers(t *testing.T) {
	e := newEnv(t)
	fr := e.addForeign(t, e.a.HostVeth)
	killed, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: MechanismTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.Reconcile([]netip.Addr{e.a.IPv4, e.c.IPv4}); err != nil {
		t.Fatal(err)
	}
	older, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: MechanismTC, CaptureName: "flc8", PeerName: "flc9"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = older // killed too, mirroring nothing
	if out, err := e.node.Exec("ip", "link", "add", "flc5", "type", "veth", "peer", "name", "flc6"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	n, err := RemoveLeftovers(e.node.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	// 2 filters on each of a and c, 2 pairs.
	if n != 6 {
		t.Errorf("removed %d, want 6", n)
	}
	e.expectMirrored(t, e.a.HostVeth, MechanismTC, 0)
	e.expectMirrored(t, e.c.HostVeth, MechanismTC, 0)
	if _, _, clsact := e.ourArtifacts(t, e.c.HostVeth); clsact {
		t.Errorf("%s: the clsact qdisc that held only our filters stayed", e.c.HostVeth)
	}
	if !fr.present(t, e) {
		t.Error("the foreign filter or program was removed")
	}
	for _, name := range []string{"flc0", "flc1", "flc8", "flc9"} {
		if _, err := e.h.LinkByName(name); err == nil {
			t.Errorf("%s still exists", name)
		} else if _, ok := err.(netlink.LinkNotFoundError); !ok {
			t.Fatal(err)
		}
	}
	e.link(t, "flc5") // not ours
	if n, err := RemoveLeftovers(e.node.NetnsPath); n != 0 || err != nil {
		t.Errorf("second call: removed %d, err %v; want 0, nil", n, err)
	}
}
