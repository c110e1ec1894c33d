//go:build integration

package netnstest_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

func TestMain(m *testing.M) {
	if err := netnstest.CheckPrereqs(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// conntrackEntry finds the line of `conntrack -L` output for the
// connection from src (original direction).
func conntrackEntry(t *testing.T, n *netnstest.Node, proto string, local string, sport uint16) string {
	t.Helper()
	out, err := n.Conntrack("-L", "-p", proto, "--orig-src", local, "--sport", strconv.Itoa(int(sport)))
	if err != nil {
		t.Fatalf("conntrack -L in node: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 || lines[0] == "" {
		t.Fatalf("want one conntrack entry from %s:%d, got:\n%s", local, sport, out)
	}
	return lines[0]
}

// tcpRetransSegs returns the TCP segments, SYN and SYN-ACK included, that
// p's network namespace has retransmitted (RetransSegs of /proc/net/snmp).
func tcpRetransSegs(t *testing.T, p *netnstest.Pod) int64 {
	t.Helper()
	var snmp []byte
	// /proc/thread-self/net is the namespace Run entered; /proc/net would
	// be the process's main thread's.
	err := p.Run(func() error {
		var err error
		snmp, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	})
	if err != nil {
		t.Fatalf("read TCP counters of pod %s: %v", p, err)
	}
	var names, values []string
	for _, line := range strings.Split(string(snmp), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "Tcp:" {
			if names == nil {
				names = f
			} else {
				values = f
			}
		}
	}
	for i, n := range names {
		if n == "RetransSegs" && i < len(values) {
			v, err := strconv.ParseInt(values[i], 10, 64)
			if err != nil {
				t.Fatalf("pod %s: RetransSegs %q: %v", p, values[i], err)
			}
			return v
		}
	}
	t.Fatalf("pod %s: no Tcp RetransSegs in /proc/net/snmp:\n%s", p, snmp)
	return 0
}

// counters returns the packets= and bytes= values of the original (first)
// and reply (second) direction of a conntrack line.
func counters(t *testing.T, line string) (fwdBytes, revBytes int64) {
	t.Helper()
	m := regexp.MustCompile(`bytes=(\d+)`).FindAllStringSubmatch(line, -1)
	if len(m) != 2 {
		t.Fatalf("conntrack line has no byte counters (nf_conntrack_acct off?): %s", line)
	}
	fwd, _ := strconv.ParseInt(m[0][1], 10, 64)
	rev, _ := strconv.ParseInt(m[1][1], 10, 64)
	return fwd, rev
}

func TestPodToServiceVIPIsDNATedAndCounted(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{
		Name: "n1",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server", Namespace: "shop"}},
	})
	client, server := node.Pod("client"), node.Pod("server")
	srv, err := server.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "web", Port: 80, Backend: server, TargetPort: 8080})
	if svc.VIP.String() != "10.96.0.1" || svc.Namespace != "shop" {
		t.Fatalf("service defaults: got VIP %s namespace %s", svc.VIP, svc.Namespace)
	}

	const sent, reply = 1 << 20, 64 << 10
	tr, err := netnstest.SendExactly(client, svc.Addr(), sent, reply)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Sent != sent || tr.Received != reply || tr.Local.Addr() != client.IPv4 {
		t.Fatalf("transfer: got %+v", tr)
	}
	st := srv.Stats()
	if st.BytesIn != sent || st.BytesOut != reply || st.Conns != 1 {
		t.Fatalf("server stats: got %+v", st)
	}
	// The backend sees the client's real address: DNAT without SNAT.
	if st.LastPeer != tr.Local {
		t.Fatalf("server saw peer %s, client was %s", st.LastPeer, tr.Local)
	}

	line := conntrackEntry(t, node, "tcp", client.IPv4.String(), tr.Local.Port())
	wantOrig := fmt.Sprintf("src=%s dst=%s sport=%d dport=80 ", client.IPv4, svc.VIP, tr.Local.Port())
	wantReply := fmt.Sprintf("src=%s dst=%s sport=8080 dport=%d ", server.IPv4, client.IPv4, tr.Local.Port())
	if !strings.Contains(line, wantOrig) || !strings.Contains(line, wantReply) {
		t.Fatalf("conntrack entry is not the DNAT one:\n got  %s\n want %q ... %q", line, wantOrig, wantReply)
	}
	fwd, rev := counters(t, line)
	if fwd < sent || rev < reply {
		t.Fatalf("conntrack counters fwd=%d rev=%d, want at least %d and %d", fwd, rev, sent, reply)
	}
}

func TestDirectPodToPodTCPAndUDP(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	tcpSrv, err := b.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := netnstest.SendExactly(a, tcpSrv.Addr(), 1000, 0); err != nil {
		t.Fatal(err)
	}
	udpSrv, err := b.ListenUDP(5353)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := netnstest.SendUDP(a, udpSrv.Addr(), 5000, 3000)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Sent != 5000 || tr.Received != 3000 || tr.Datagrams != 5 {
		t.Fatalf("udp transfer: got %+v", tr)
	}
	if st := udpSrv.Stats(); st.BytesIn != 5000 || st.BytesOut != 3000 || st.Conns != 5 {
		t.Fatalf("udp server stats: got %+v", st)
	}
	line := conntrackEntry(t, node, "udp", a.IPv4.String(), tr.Local.Port())
	if !strings.Contains(line, fmt.Sprintf("dst=%s sport=%d dport=5353", b.IPv4, tr.Local.Port())) {
		t.Fatalf("udp conntrack entry: %s", line)
	}
}

func TestUDPServiceVIP(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "dns"}}})
	srv, err := node.Pod("dns").ListenUDP(5353)
	if err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Port: 53, TargetPort: 5353, Proto: flow.ProtoUDP, Backend: node.Pod("dns")})
	tr, err := netnstest.SendUDP(node.Pod("a"), svc.Addr(), 100, 400)
	if err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.BytesIn != 100 || tr.Received != 400 {
		t.Fatalf("udp via VIP: transfer %+v server %+v", tr, st)
	}
	line := conntrackEntry(t, node, "udp", node.Pod("a").IPv4.String(), tr.Local.Port())
	if !strings.Contains(line, "dst="+svc.VIP.String()+" ") || !strings.Contains(line, "sport=5353") {
		t.Fatalf("udp conntrack entry is not DNATed: %s", line)
	}
}

func TestHTTPThroughService(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "web"}}})
	web := node.Pod("web")
	hs, err := web.ServeHTTP(8080)
	if err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Port: 80, TargetPort: 8080, Backend: web})
	base := "http://" + svc.Addr().String()
	for _, tc := range []struct {
		path   string
		status int
		body   string
		size   int
	}{
		{"/", 200, "hello from default/web\n", -1},
		{"/status/503", 503, "status 503 from default/web\n", -1},
		{"/bytes/10000", 200, "", 10000},
		{"/nope", 404, "", -1},
	} {
		res, err := node.Pod("client").HTTPGet(base + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != tc.status || (tc.body != "" && string(res.Body) != tc.body) || (tc.size >= 0 && len(res.Body) != tc.size) {
			t.Errorf("GET %s: got %d %q (%d bytes)", tc.path, res.Status, res.Body, len(res.Body))
		}
		if res.Local.Addr() != node.Pod("client").IPv4 {
			t.Errorf("GET %s: local address %s is not the client pod", tc.path, res.Local)
		}
	}
	if hs.Requests() != 4 {
		t.Errorf("server counted %d requests, want 4", hs.Requests())
	}
}

func TestDualStackServiceVIP(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{IPv6: true, Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ListenTCP(9000)
	if err != nil {
		t.Fatal(err)
	}
	retransA, retransB := tcpRetransSegs(t, a), tcpRetransSegs(t, b)
	start := time.Now()
	if _, err := netnstest.SendExactly(a, b.Addr6(9000), 100, 100); err != nil {
		t.Fatalf("pod to pod over IPv6: %v", err)
	}
	t.Logf("first IPv6 connection took %s", time.Since(start).Round(10*time.Microsecond))
	// A packet lost because links or neighbour discovery were not ready
	// when NewNode returned is retransmitted (the SYN after 1 s): count
	// the retransmissions rather than time the connection.
	if ra, rb := tcpRetransSegs(t, a)-retransA, tcpRetransSegs(t, b)-retransB; ra != 0 || rb != 0 {
		t.Errorf("first IPv6 connection: %d segments retransmitted by the client, %d by the server: the topology was not ready when NewNode returned", ra, rb)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{IPv6: true, Port: 90, TargetPort: 9000, Backend: b})
	if !svc.VIP.Is6() {
		t.Fatalf("IPv6 service got VIP %s", svc.VIP)
	}
	tr, err := netnstest.SendExactly(a, svc.Addr(), 2000, 10)
	if err != nil {
		t.Fatalf("IPv6 service: %v", err)
	}
	if tr.Local.Addr() != a.IPv6 || srv.Stats().LastPeer != tr.Local {
		t.Fatalf("IPv6 service: client %s, server saw %s", tr.Local, srv.Stats().LastPeer)
	}
	line := conntrackEntry(t, node, "tcp", a.IPv6.String(), tr.Local.Port())
	if !strings.Contains(line, "dst="+svc.VIP.String()+" ") || !strings.Contains(line, "src="+b.IPv6.String()+" ") {
		t.Fatalf("IPv6 conntrack entry is not DNATed: %s", line)
	}
}

func TestInterNodePodTraffic(t *testing.T) {
	n0 := netnstest.NewNodeT(t, netnstest.Config{Name: "n0", Index: 0, IPv6: true, Pods: []netnstest.PodSpec{{Name: "client"}}})
	n1 := netnstest.NewNodeT(t, netnstest.Config{Name: "n1", Index: 1, IPv6: true, Pods: []netnstest.PodSpec{{Name: "server"}}})
	netnstest.ConnectNodesT(t, n0, n1)
	server := n1.Pod("server")
	if _, err := server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, n0, netnstest.Service{Port: 80, TargetPort: 8080, Backend: server})
	for _, to := range []netip.AddrPort{server.Addr(8080), server.Addr6(8080), svc.Addr()} {
		tr, err := netnstest.SendExactly(n0.Pod("client"), to, 3000, 500)
		if err != nil {
			t.Fatalf("inter-node to %s: %v", to, err)
		}
		// Both nodes track the connection; the client's node did the DNAT.
		for _, n := range []*netnstest.Node{n0, n1} {
			conntrackEntry(t, n, "tcp", tr.Local.Addr().String(), tr.Local.Port())
		}
	}
}

func TestCloseLeavesNoNamespace(t *testing.T) {
	node, err := netnstest.NewNode(netnstest.Config{IPv6: true, Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Pod("a").ServeHTTP(80); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Pod("b").ListenUDP(53); err != nil {
		t.Fatal(err)
	}
	names := []string{node.NetnsName}
	for _, p := range node.Pods() {
		names = append(names, p.NetnsName)
	}
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}
	if err := node.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	out, err := os.ReadDir(netnstest.NetnsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range out {
		for _, name := range names {
			if e.Name() == name {
				t.Errorf("netns %s still exists after Close", name)
			}
		}
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, name := range names {
		if bytes.Contains(list, []byte(name)) {
			t.Errorf("ip netns list still shows %s", name)
		}
	}
}
