package netnstest

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestAddressPlan(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  func() (netip.Addr, error)
		want string
	}{
		{"first pod of node 0 is .2", func() (netip.Addr, error) { return podIPv4(0, 0) }, "10.244.0.2"},
		{"pods of node 3 live in 10.244.3.0/24", func() (netip.Addr, error) { return podIPv4(3, 5) }, "10.244.3.7"},
		{"IPv6 pod mirrors the IPv4 plan", func() (netip.Addr, error) { return podIPv6(3, 5) }, "fd00:10:244:3::7"},
		{"first VIP of node 0 is .1", func() (netip.Addr, error) { return serviceIPv4(0, 0) }, "10.96.0.1"},
		{"IPv6 VIP", func() (netip.Addr, error) { return serviceIPv6(2, 9) }, "fd00:10:96:2::a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.got()
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
	if _, err := podIPv4(0, maxPods); err == nil {
		t.Error("pod number past the /24 accepted")
	}
	if _, err := serviceIPv4(0, maxServices); err == nil {
		t.Error("service number past the /24 accepted")
	}
	if got := nodeIPv6(1).String(); got != "fd00:172:31::2" {
		t.Errorf("nodeIPv6(1) = %s", got)
	}
	if !podCIDRv6(4).Contains(netip.MustParseAddr("fd00:10:244:4::9")) || !podCIDRv4(4).Contains(netip.MustParseAddr("10.244.4.9")) {
		t.Error("pod CIDRs do not contain their pods")
	}
}

func TestHostVethNameIsCalicoStyleAndFits(t *testing.T) {
	long := strings.Repeat("a", 63)
	a, b := hostVethName("default", long), hostVethName("kube-system", long)
	if len(a) != 15 || !strings.HasPrefix(a, "cali") {
		t.Errorf("got %q, want cali + 11 hex digits", a)
	}
	if a == b {
		t.Error("same pod name in two namespaces got one interface name")
	}
	if a != hostVethName("default", long) {
		t.Error("name is not stable")
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "web-0", "x1"} {
		if err := validName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Web", "-a", "a-", "a/b", "a b", strings.Repeat("a", 64), "a..b"} {
		if err := validName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestServiceDefaultsAndRules(t *testing.T) {
	n := &Node{Name: "n", Index: 1}
	backend := &Pod{Name: "web", Namespace: "shop", IPv4: netip.MustParseAddr("10.244.1.3")}
	svc, err := n.completeService(Service{Port: 80, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Name != "svc-0" || svc.Namespace != "shop" || svc.Proto != flow.ProtoTCP || svc.TargetPort != 80 || svc.VIP.String() != "10.96.1.1" {
		t.Fatalf("defaults: %+v", svc)
	}
	rules := dnatRules(svc)
	want := `add rule inet flowlens-test services ip daddr 10.96.1.1 tcp dport 80 dnat ip to 10.244.1.3:80 comment "shop/svc-0"`
	if !strings.Contains(rules, want+"\n") || !strings.Contains(rules, "services-local ip daddr") {
		t.Fatalf("rules:\n%s\nwant a line\n%s\nand one for services-local", rules, want)
	}

	backend.IPv6 = netip.MustParseAddr("fd00:10:244:1::3")
	svc6, err := n.completeService(Service{IPv6: true, Port: 53, TargetPort: 5353, Proto: flow.ProtoUDP, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	if r := dnatRules(svc6); !strings.Contains(r, "ip6 daddr fd00:10:96:1::1 udp dport 53 dnat ip6 to [fd00:10:244:1::3]:5353") {
		t.Fatalf("IPv6 rules:\n%s", r)
	}

	for name, bad := range map[string]Service{
		"no backend":              {Port: 80},
		"no port":                 {Backend: backend},
		"sctp":                    {Port: 80, Backend: backend, Proto: flow.ProtoSCTP},
		"IPv6 VIP, IPv4 backend":  {Port: 80, VIP: netip.MustParseAddr("fd00::1"), Backend: &Pod{Name: "v4only"}},
		"IPv6 wanted, no backend": {Port: 80, IPv6: true, Backend: &Pod{Name: "v4only"}},
	} {
		if _, err := n.completeService(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUDPChunking(t *testing.T) {
	for _, tc := range []struct{ n, reply, datagrams int }{
		{0, 0, 1}, {1, 0, 1}, {udpChunk, 0, 1}, {udpChunk + 1, 0, 2}, {100, 3 * udpChunk, 3},
	} {
		count := max(chunks(tc.n), chunks(tc.reply), 1)
		if count != tc.datagrams {
			t.Errorf("n=%d reply=%d: %d datagrams, want %d", tc.n, tc.reply, count, tc.datagrams)
		}
		sumN, sumR := 0, 0
		for i := range count {
			p, r := share(tc.n, count, i), share(tc.reply, count, i)
			if p > udpChunk || r > udpChunk {
				t.Errorf("n=%d reply=%d: datagram %d carries %d/%d bytes, over %d", tc.n, tc.reply, i, p, r, udpChunk)
			}
			sumN, sumR = sumN+p, sumR+r
		}
		if sumN != tc.n || sumR != tc.reply {
			t.Errorf("n=%d reply=%d: shares add up to %d/%d", tc.n, tc.reply, sumN, sumR)
		}
	}
}

func TestSolicitedNodeGroup(t *testing.T) {
	g := solicitedNode(netip.MustParseAddr("fd00:10:244::1:2:3"))
	if g.String() != "ff02::1:ff02:3" {
		t.Fatalf("got %s", g)
	}
	igmp6 := "1    lo              ff020000000000000000000000000001     1 0000000C 0\n" +
		"2    eth0            ff0200000000000000000001ff020003     1 00000004 0\n"
	if !hasGroup([]byte(igmp6), "eth0", hex.EncodeToString(g.AsSlice())) {
		t.Error("joined group not found")
	}
	if hasGroup([]byte(igmp6), "lo", hex.EncodeToString(g.AsSlice())) {
		t.Error("group found on the wrong interface")
	}
}
