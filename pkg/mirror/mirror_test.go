package mirror

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestConfigComplete(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		want    Config
		wantErr string
	}{
		{name: "defaults fill the capture names and auto", cfg: Config{},
			want: Config{CaptureName: "flc0", PeerName: "flc1", Mechanism: MechanismAuto}},
		{name: "explicit values are kept", cfg: Config{NetnsPath: "/n", CaptureName: "flcx", PeerName: "flcy", Mechanism: MechanismTC},
			want: Config{NetnsPath: "/n", CaptureName: "flcx", PeerName: "flcy", Mechanism: MechanismTC}},
		{name: "unknown mechanism is refused", cfg: Config{Mechanism: "xdp"}, wantErr: `mechanism "xdp"`},
		{name: "over-long interface name is refused", cfg: Config{CaptureName: "flc0123456789abcdef"}, wantErr: "longer than 15"},
		{name: "one name for both ends is refused", cfg: Config{CaptureName: "flc0", PeerName: "flc0"}, wantErr: "both are"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.complete()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || cfg != tc.want {
				t.Fatalf("got %+v, %v; want %+v", cfg, err, tc.want)
			}
		})
	}
}

func TestSelectKeepsOptedInAddresses(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::3")
	got := Select([]netip.Addr{a, b, c}, func(x netip.Addr) bool { return x != b })
	if !slices.Equal(got, []netip.Addr{a, c}) {
		t.Fatalf("Select = %v, want [%v %v]", got, a, c)
	}
	if got := Select([]netip.Addr{a}, func(netip.Addr) bool { return false }); len(got) != 0 {
		t.Fatalf("Select with nobody opted in = %v", got)
	}
}

func mirred(prio uint16, classID uint32, target int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{Priority: prio},
		ClassId:     classID,
		Actions:     []netlink.Action{&netlink.MirredAction{Ifindex: target}},
	}
}

func TestOursRecognisesOnlyOurFilters(t *testing.T) {
	for _, tc := range []struct {
		name       string
		f          netlink.Filter
		hook       int
		want       bool
		wantTarget int
	}{
		{"our ingress mirror", mirred(TCPriority, Marker, 7), 0, true, 7},
		{"our egress mirror", mirred(TCPriority+1, Marker, 7), 1, true, 7},
		{"ingress priority listed on egress is not ours", mirred(TCPriority, Marker, 7), 1, false, 0},
		{"same priority without our marker", mirred(TCPriority, 0x10001, 7), 0, false, 0},
		{"another kind at our priority", &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{Priority: TCPriority}}, 0, false, 0},
		{"our marker without a mirred action", &netlink.U32{FilterAttrs: netlink.FilterAttrs{Priority: TCPriority}, ClassId: Marker}, 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, target := ours(tc.f, tc.hook)
			if ok != tc.want || target != tc.wantTarget {
				t.Fatalf("ours = %v, %d; want %v, %d", ok, target, tc.want, tc.wantTarget)
			}
		})
	}
}

func TestExactlyOurMirror(t *testing.T) {
	one := func(targets ...int) tcState {
		var st tcState
		st.targets[0] = targets
		st.targets[1] = targets
		return st
	}
	if !exactlyOurMirror(one(5), 5) {
		t.Error("one filter per hook to the capture veth: want adopted")
	}
	if exactlyOurMirror(one(4), 5) {
		t.Error("filters to an old capture veth: want replaced")
	}
	if exactlyOurMirror(one(5, 5), 5) {
		t.Error("duplicates: want replaced")
	}
	if exactlyOurMirror(tcState{}, 5) {
		t.Error("nothing installed: want installed")
	}
}
