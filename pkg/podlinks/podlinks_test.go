package podlinks

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
)

func veth(name string, nsid, parent int) *netlink.Veth {
	a := netlink.NewLinkAttrs()
	a.Name, a.Index, a.NetNsID, a.ParentIndex = name, 7, nsid, parent
	return &netlink.Veth{LinkAttrs: a}
}

func TestIsPodFacing(t *testing.T) {
	w, err := New(Config{ExcludePrefixes: []string{"flc"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.NewLinkAttrs()}
	br.Name = "cni0"
	for _, tc := range []struct {
		name string
		link netlink.Link
		want bool
	}{
		{"routed veth, peer in a pod", veth("cali12ab", 3, 2), true},
		{"bridge port veth, peer in a pod", veth("veth9f00", 0, 2), true},
		{"capture veth excluded by prefix", veth("flc0", 3, 2), false},
		{"veth pair inside the node", veth("vethlocal", -1, 12), false},
		{"bridge", br, false},
	} {
		if got := w.isPodFacing(tc.link); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if n := counter(t, w.metrics.unclassified); n != 0 {
		t.Errorf("unclassified %v after classifiable links", n)
	}
	if w.isPodFacing(veth("vethodd", -1, 0)) {
		t.Errorf("veth with no peer information classified pod-facing")
	}
	if n := counter(t, w.metrics.unclassified); n != 1 {
		t.Errorf("unclassified %v, want 1", n)
	}
}

func TestAddRemoveEvents(t *testing.T) {
	w, err := New(Config{NetnsPath: "/run/netns/x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var evs []Event
	fn := func(ev Event) { evs = append(evs, ev) }
	l := veth("cali1", 3, 2)
	w.add(l, fn)
	w.add(l, fn) // repeated NEWLINK: no second event
	w.remove(99, fn)
	w.remove(7, fn)
	w.remove(7, fn)
	want := []Event{{Added, 7, "cali1", "/run/netns/x"}, {Removed, 7, "cali1", "/run/netns/x"}}
	if len(evs) != len(want) || evs[0] != want[0] || evs[1] != want[1] {
		t.Errorf("events %+v, want %+v", evs, want)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{ExcludePrefixes: []string{""}}, nil); err == nil {
		t.Errorf("empty exclude prefix accepted")
	}
	if _, err := New(Config{ResyncBackoff: -1}, nil); err == nil {
		t.Errorf("negative backoff accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{}, reg); err != nil {
		t.Fatal(err)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
