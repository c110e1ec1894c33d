//go:build integration

package packetdrops

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/flowlens/flowlens/pkg/netns"
)

// The traffic mirror's copies end on its capture pair (flc*): dropped at
// the peer's ingress, or as not for this host. They are not a flow's
// drops: the original went on. The same datagrams dropped the same way on
// an interface of another name are.
func TestCaptureInterfaceCopiesAreNotDrops(t *testing.T) {
	d, reg, _ := startDrops(t, Config{}, nil)
	const sent = 20
	for _, tc := range []struct {
		prefix string
		net    int
		copies bool
	}{
		{"pdc", 78, false},
		{"flc", 77, true},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			a, b := fmt.Sprintf("pdcap%da", tc.net), fmt.Sprintf("pdcap%db", tc.net)
			sh := func(cmd string) {
				t.Helper()
				if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", cmd, err, out)
				}
			}
			sh(fmt.Sprintf("ip netns add %s && ip netns add %s", a, b))
			t.Cleanup(func() { _ = exec.Command("sh", "-c", fmt.Sprintf("ip netns del %s; ip netns del %s", a, b)).Run() })
			src, dst := netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", tc.net)), netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", tc.net))
			sh(fmt.Sprintf("ip -n %[1]s link add name %[3]s0 type veth peer name %[3]s1 netns %[2]s && "+
				"ip -n %[1]s addr add %[4]s/24 dev %[3]s0 && ip -n %[1]s link set %[3]s0 up && "+
				"ip -n %[2]s addr add %[5]s/24 dev %[3]s1 && ip -n %[2]s link set %[3]s1 up && "+
				"ip netns exec %[2]s nft 'add table inet pdcap; add chain inet pdcap in { type filter hook input priority 0 ; }; add rule inet pdcap in udp dport 9 counter drop'",
				a, b, tc.prefix+fmt.Sprint(tc.net), src, dst))
			before := metric(t, reg, "flowlens_packetdrops_capture_copies_total", "")
			var conn *net.UDPConn
			if err := netns.Do("/run/netns/"+a, func() (err error) {
				conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			sendUDP(t, conn, sent, 32, 0)
			want := uint64(sent)
			if tc.copies {
				want = 0
			}
			fwd, rev, _ := collect(t, d, udpConn(t, conn, netip.AddrPortFrom(dst, 9)), want)
			if fwd != want || rev != 0 {
				t.Errorf("drops %d forward %d reverse, want %d forward", fwd, rev, want)
			}
			// The kernel's counters reach the metrics every statsInterval.
			// Only the flc* case reads the metric: it is machine-wide, and
			// another test's mirror being torn down adds copies to it at
			// any time. On pdc* the drops attributed above already show
			// the packets were not taken for copies (a copy is never also
			// a drop).
			if tc.copies {
				waitFor(t, func() bool {
					return metric(t, reg, "flowlens_packetdrops_capture_copies_total", "")-before >= sent
				}, "the copies counted")
			}
		})
	}
}
