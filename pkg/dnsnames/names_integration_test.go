//go:build integration

package dnsnames

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/podlinks"
	"github.com/flowlens/flowlens/test/netnstest"
)

// podNamespaces answers what k8smeta answers in the agent: the Kubernetes
// namespace of the pod holding an address (here the netnstest pods').
type podNamespaces map[netip.Addr]string

func (m podNamespaces) NamespaceOf(a netip.Addr) string { return m[a] }

func namespacesOf(pods ...*netnstest.Pod) podNamespaces {
	m := podNamespaces{}
	for _, p := range pods {
		m[p.IPv4] = p.Namespace
		if p.IPv6.IsValid() {
			m[p.IPv6] = p.Namespace
		}
	}
	return m
}

func attachAll(t testing.TB, n *Names, node *netnstest.Node) []int {
	t.Helper()
	var ifs []int
	for _, p := range node.Pods() {
		idx, _, err := podlinks.HostLink(node.NetnsPath, p.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Attach(idx, node.NetnsPath); err != nil {
			t.Fatal(err)
		}
		ifs = append(ifs, idx)
	}
	return ifs
}

// flowRecord is the record the agent would export for a TCP connection
// from pod to dst, after the Kubernetes enricher named its source.
func flowRecord(pod *netnstest.Pod, src, dst netip.Addr, sport uint16) *flow.Record {
	r := &flow.Record{}
	r.Tuple = flow.NewTuple(src, dst, sport, 443, flow.ProtoTCP)
	r.OrigDstIP = r.Tuple.DstIP
	r.OrigDstPort = 443
	r.ID = uint32(sport)
	r.Source.PodName = pod.Name
	r.Source.PodNamespace = pod.Namespace
	return r
}

// waitNamed enriches fresh records of one connection until one is named
// (Run stores answers asynchronously) or 5 s pass.
func waitNamed(n *Names, mk func() *flow.Record) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := mk()
		r.EndReason = flow.EndOfFlow // keep nothing between tries
		n.Enrich(r)
		if r.DestinationName != "" || time.Now().After(deadline) {
			return r.DestinationName
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func enrichOnce(n *Names, r *flow.Record) string {
	r.EndReason = flow.EndOfFlow
	n.Enrich(r)
	return r.DestinationName
}

// TestNamesFromPodDNS: a DNS server in a pod answers api.example.test ->
// 203.0.113.10 (and an AAAA, and a CNAME chain) with a short TTL; a client
// pod asks; the client's flows to those addresses are named through
// Enrich, so are those of another pod of its namespace, not those of a
// pod of another namespace; after the answer's lifetime (TTL raised to
// the floor) a new flow is not named. Through TCX and through the tc
// clsact fallback.
func TestNamesFromPodDNS(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC} {
		t.Run(mode, func(t *testing.T) { testNamesFromPodDNS(t, mode) })
	}
}

func testNamesFromPodDNS(t *testing.T, mode string) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dns" + mode, IPv6: true, Pods: []netnstest.PodSpec{
		{Name: "coredns", Namespace: "kube-system"},
		{Name: "client", Namespace: "team-a"},
		{Name: "peer", Namespace: "team-a"},
		{Name: "other", Namespace: "team-b"},
	}})
	dnsPod, client, peer, other := node.Pod("coredns"), node.Pod("client"), node.Pod("peer"), node.Pod("other")
	const ttl = 1
	floor := 3 * time.Second
	startDNSServer(t, dnsPod, zone{
		"api.example.test.": {{typ: dnsmessage.TypeA, ttl: ttl, data: "203.0.113.10"}, {typ: dnsmessage.TypeAAAA, ttl: ttl, data: "2001:db8::10"}},
		"www.example.test.": {{typ: dnsmessage.TypeCNAME, ttl: 300, data: "edge.cdn.test."}},
		"edge.cdn.test.":    {{typ: dnsmessage.TypeA, ttl: ttl, data: "198.51.100.20"}},
	})
	n, err := New(Config{Attach: mode, TTLFloor: floor, Namespaces: namespacesOf(node.Pods()...)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runNames(t, n)
	attachAll(t, n, node)
	n.attachMu.Lock()
	for k, a := range n.attached {
		if a.Mode() != mode {
			t.Errorf("ifindex %d attached as %s, want %s", k.ifindex, a.Mode(), mode)
		}
	}
	n.attachMu.Unlock()

	ext4, ext6, cdn := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("198.51.100.20")
	// The pods' DNS traffic still flows with the program attached.
	asked := time.Now()
	for _, q := range []struct {
		server netip.AddrPort
		name   string
		typ    dnsmessage.Type
		want   netip.Addr
	}{
		{dnsPod.Addr(53), "api.example.test.", dnsmessage.TypeA, ext4},
		{dnsPod.Addr6(53), "api.example.test.", dnsmessage.TypeAAAA, ext6},
		{dnsPod.Addr(53), "www.example.test.", dnsmessage.TypeA, cdn},
	} {
		got, err := resolve(client, q.server, q.name, q.typ)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != q.want {
			t.Fatalf("%s %v from %s: %v, want %v", q.name, q.typ, q.server, got, q.want)
		}
	}

	if got := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv4, ext4, 40000) }); got != "api.example.test" {
		t.Fatalf("client -> %s named %q, want api.example.test", ext4, got)
	}
	if got := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv6, ext6, 40001) }); got != "api.example.test" {
		t.Errorf("client -> %s (asked over IPv6) named %q, want api.example.test", ext6, got)
	}
	if got := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv4, cdn, 40002) }); got != "www.example.test" {
		t.Errorf("client -> %s (a CNAME chain's address) named %q, want the asked www.example.test", cdn, got)
	}
	// A connection opened now keeps its name through its records.
	open := flowRecord(client, client.IPv4, ext4, 40100)
	n.Enrich(open)
	if open.DestinationName != "api.example.test" {
		t.Fatalf("open connection named %q", open.DestinationName)
	}
	if got := enrichOnce(n, flowRecord(peer, peer.IPv4, ext4, 40003)); got != "api.example.test" {
		t.Errorf("a pod of the client's namespace: %q, want api.example.test", got)
	}
	if got := enrichOnce(n, flowRecord(other, other.IPv4, ext4, 40004)); got != "" {
		t.Errorf("a pod of another namespace got %q", got)
	}

	// After the lifetime (the 1 s TTL raised to the floor), from when the
	// answers were asked for (the program saw them after that).
	time.Sleep(time.Until(asked.Add(floor + 500*time.Millisecond)))
	if got := enrichOnce(n, flowRecord(client, client.IPv4, ext4, 40005)); got != "" {
		t.Errorf("a new connection after the answer's lifetime named %q", got)
	}
	if got := enrichOnce(n, flowRecord(peer, peer.IPv4, ext4, 40006)); got != "" {
		t.Errorf("a pod of the namespace after the answer's lifetime named %q", got)
	}
	later := flowRecord(client, client.IPv4, ext4, 40100)
	later.EndReason = flow.EndOfFlow
	n.Enrich(later)
	if later.DestinationName != "api.example.test" {
		t.Errorf("the connection opened within the lifetime lost its name: %q", later.DestinationName)
	}

	n.syncStats()
	if got := value(n.metrics.kernel[statEvents]); got < 3 {
		t.Errorf("ring_events_total %v, want at least the 3 answered responses", got)
	}
	if got := value(n.metrics.responses); got != value(n.metrics.kernel[statEvents]) {
		t.Errorf("responses_total %v, ring events %v: every event read", got, value(n.metrics.kernel[statEvents]))
	}
	if got := value(n.metrics.parseErrors); got != 0 {
		t.Errorf("parse_errors_total %v", got)
	}
	if got := value(n.metrics.attached); got != 4 {
		t.Errorf("attached_interfaces %v, want 4", got)
	}
}

// TestNXDOMAINNotPassedUp: unanswered responses stay in the kernel.
func TestNXDOMAINNotPassedUp(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsnx", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	startDNSServer(t, node.Pod("dns"), zone{})
	n, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runNames(t, n)
	attachAll(t, n, node)
	for i := 0; i < 5; i++ {
		if _, err := resolve(node.Pod("client"), node.Pod("dns").Addr(53), fmt.Sprintf("missing%d.example.", i), dnsmessage.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	n.syncStats()
	if got := value(n.metrics.kernel[statEvents]); got != 0 {
		t.Errorf("ring_events_total %v for NXDOMAIN responses, want 0", got)
	}
}

// TestRateBoundAndTruncation: responses over the per-CPU bound are counted
// and not passed up; a response longer than the copy bound is counted and
// its answers that fit are used.
func TestRateBoundAndTruncation(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsrl", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	var big []zoneRR
	for i := 1; i <= 100; i++ { // 12+22 + 100*16 bytes: over 1232
		big = append(big, zoneRR{typ: dnsmessage.TypeA, ttl: 60, data: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()})
	}
	startDNSServer(t, node.Pod("dns"), zone{
		"big.example.test.": big,
		"api.example.test.": {{typ: dnsmessage.TypeA, ttl: 60, data: "203.0.113.10"}},
	})
	const bound = 5
	n, err := New(Config{MaxResponsesPerSecond: bound}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runNames(t, n)
	attachAll(t, n, node)
	client, dns := node.Pod("client"), node.Pod("dns")
	got, err := resolve(client, dns.Addr(53), "big.example.test.", dnsmessage.TypeA)
	if err != nil || len(got) != 100 {
		t.Fatalf("big response: %d addresses, %v", len(got), err)
	}
	first := netip.AddrFrom4([4]byte{198, 51, 100, 1})
	last := netip.AddrFrom4([4]byte{198, 51, 100, 100})
	if name := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv4, first, 1) }); name != "big.example.test" {
		t.Errorf("first answer of a long response named %q", name)
	}
	if name := enrichOnce(n, flowRecord(client, client.IPv4, last, 2)); name != "" {
		t.Errorf("answer beyond the copy bound named %q", name)
	}
	const burst = 40
	for i := 0; i < burst; i++ {
		if _, err := resolve(client, dns.Addr(53), "api.example.test.", dnsmessage.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	n.syncStats()
	if got := value(n.metrics.kernel[statTruncated]); got != 1 {
		t.Errorf("truncated_total %v, want 1", got)
	}
	events, limited := value(n.metrics.kernel[statEvents]), value(n.metrics.kernel[statRateLimited])
	if events+limited != burst+1 {
		t.Errorf("ring events %v + rate limited %v != %d responses", events, limited, burst+1)
	}
	// The burst takes well under the two seconds that would let through
	// more than two windows' worth per CPU.
	if limited == 0 || events > float64(2*bound*len(n.percpu)) {
		t.Errorf("rate bound %d/s per CPU: %v passed, %v limited", bound, events, limited)
	}
}

// TestAttachDetach: attaching twice is a no-op, detaching removes the
// program (no more responses seen), detaching again or a gone interface is
// no error.
func TestAttachDetach(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsad", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	startDNSServer(t, node.Pod("dns"), zone{"api.example.test.": {{typ: dnsmessage.TypeA, ttl: 60, data: "203.0.113.10"}}})
	n, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runNames(t, n)
	ifs := attachAll(t, n, node)
	attachAll(t, n, node)
	if got := value(n.metrics.attached); got != 2 {
		t.Errorf("attached_interfaces %v after attaching twice, want 2", got)
	}
	client, dns := node.Pod("client"), node.Pod("dns")
	ask := func() {
		t.Helper()
		if _, err := resolve(client, dns.Addr(53), "api.example.test.", dnsmessage.TypeA); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		n.syncStats()
	}
	ask()
	if got := value(n.metrics.kernel[statEvents]); got != 1 {
		t.Fatalf("ring events %v, want 1", got)
	}
	for _, idx := range ifs {
		if err := n.Detach(idx, node.NetnsPath); err != nil {
			t.Fatal(err)
		}
		if err := n.Detach(idx, node.NetnsPath); err != nil {
			t.Errorf("second detach: %v", err)
		}
	}
	ask()
	if got := value(n.metrics.kernel[statEvents]); got != 1 {
		t.Errorf("ring events %v after detaching, want still 1", got)
	}
}

// TestNextFilterRuns: the program returns TC_ACT_UNSPEC, so a tc filter
// after it still decides: a drop filter on the client's interface drops
// the response the program saw.
func TestNextFilterRuns(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC} {
		t.Run(mode, func(t *testing.T) {
			node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsnx" + mode, Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
			startDNSServer(t, node.Pod("dns"), zone{"api.example.test.": {{typ: dnsmessage.TypeA, ttl: 60, data: "203.0.113.10"}}})
			n, err := New(Config{Attach: mode}, nil)
			if err != nil {
				t.Fatal(err)
			}
			runNames(t, n)
			attachAll(t, n, node)
			client := node.Pod("client")
			if out, err := node.Exec("tc", "qdisc", "replace", "dev", client.HostVeth, "clsact"); err != nil && mode == AttachTCX {
				t.Fatalf("clsact: %v: %s", err, out)
			}
			// One exchange first, so the node has the client's
			// neighbour entry (ARP is not dropped below anyway).
			if _, err := resolve(client, node.Pod("dns").Addr(53), "api.example.test.", dnsmessage.TypeA); err != nil {
				t.Fatal(err)
			}
			// A cls_bpf filter that drops every IPv4 packet, after ours
			// (a later priority; under TCX, legacy tc runs after the
			// TCX chain). This kernel has no gact module for u32.
			drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, 2), // TC_ACT_SHOT
				asm.Return(),
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer drop.Close()
			idx, _, err := podlinks.HostLink(node.NetnsPath, client.IPv4)
			if err != nil {
				t.Fatal(err)
			}
			if err := node.Run(func() error {
				return netlink.FilterAdd(&netlink.BpfFilter{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_EGRESS, Handle: 1, Priority: 5, Protocol: unix.ETH_P_IP},
					Fd:          drop.FD(), Name: "test_drop", DirectAction: true,
				})
			}); err != nil {
				t.Fatalf("drop filter: %v", err)
			}
			if _, err := resolve(client, node.Pod("dns").Addr(53), "api.example.test.", dnsmessage.TypeA); err == nil {
				t.Fatal("the response reached the client: the drop filter after the program did not run")
			}
			n.syncStats()
			if got := value(n.metrics.kernel[statEvents]); got != 2 {
				t.Errorf("ring events %v, want 2 (the second response seen before the drop)", got)
			}
		})
	}
}
