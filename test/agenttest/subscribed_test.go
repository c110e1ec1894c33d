package agenttest

import "testing"

func TestNetlinkSubscribed(t *testing.T) {
	const table = `sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
0000000025370c15 0   0          00000000 0        0        0     2        0        4
00000000aaaaaaaa 12  4001       00000000 0        0        0     2        0        100
00000000bbbbbbbb 12  4002       00000005 0        0        0     2        0        200
00000000cccccccc 0   4003       00000001 0        0        0     2        0        300
00000000dddddddd 12  4004       00000006 0        0        0     2        0        400
`
	for _, tc := range []struct {
		name   string
		inodes map[uint64]bool
		want   bool
	}{
		{"netfilter socket in the NEW and DESTROY groups", map[uint64]bool{200: true}, true},
		{"dump socket: no groups", map[uint64]bool{100: true}, false},
		{"route socket in group 1", map[uint64]bool{300: true}, false},
		{"netfilter socket without the NEW group", map[uint64]bool{400: true}, false},
		{"subscribed socket of another process", map[uint64]bool{4: true, 100: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := netlinkSubscribed([]byte(table), tc.inodes)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("subscribed = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := netlinkSubscribed([]byte("header\n0000 12 1\n"), map[uint64]bool{1: true}); err == nil {
		t.Error("a truncated line was accepted")
	}
}

func TestParseEventWatch(t *testing.T) {
	for _, tc := range []struct {
		cfg    string
		netns  string
		events bool
	}{
		{"nodeName: n\nconntrack:\n  netns: /run/netns/x\n  pollInterval: 1s\n", "/run/netns/x", true},
		{"conntrack:\n  events: false\n", "", false},
		{"nodeName: n\n", "", true},
	} {
		netns, events, err := parseEventWatch(tc.cfg)
		if err != nil {
			t.Fatalf("%q: %v", tc.cfg, err)
		}
		if netns != tc.netns || events != tc.events {
			t.Errorf("%q: netns %q events %v, want %q %v", tc.cfg, netns, events, tc.netns, tc.events)
		}
	}
	if _, _, err := parseEventWatch("conntrack: [\n"); err == nil {
		t.Error("unparsable config accepted")
	}
}
