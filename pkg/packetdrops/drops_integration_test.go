//go:build integration

package packetdrops

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// nftTestTable is this package's table in a test node namespace.
const nftTestTable = "pdtest"

// startDrops loads and runs the observer for one test; clock, when not
// nil, is an offset added to the wall clock (to run the TTL forward).
func startDrops(t testing.TB, cfg Config, clock *atomic.Int64) (*Drops, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := New(cfg, reg)
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	if clock != nil {
		d.now = func() time.Time { return time.Now().Add(time.Duration(clock.Load())) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	t.Cleanup(stop)
	return d, reg, stop
}

// nft loads rules into the node namespace.
func nft(t testing.TB, node *netnstest.Node, rules string) {
	t.Helper()
	if out, err := node.Exec("sh", "-c", "printf '%s' \"$0\" | nft -f -", rules); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
}

// nftCounter reads a named counter's packets.
func nftCounter(t testing.TB, node *netnstest.Node, name string) uint64 {
	t.Helper()
	out, err := node.Exec("nft", "-j", "list", "counter", "inet", nftTestTable, name)
	if err != nil {
		t.Fatalf("list counter %s: %v", name, err)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("counter %s: %v: %s", name, err, out)
	}
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			return o.Counter.Packets
		}
	}
	t.Fatalf("counter %s not in %s", name, out)
	return 0
}

// metric reads one series of reg (0 when absent).
func metric(t testing.TB, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if reason != "" && !hasReason(m, reason) {
				continue
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func hasReason(m *dto.Metric, reason string) bool {
	for _, l := range m.Label {
		if l.GetName() == "reason" && l.GetValue() == reason {
			return true
		}
	}
	return false
}

// sendUDP writes n datagrams on c, each starting with the exchange
// header asking reply bytes back, padded to size payload bytes.
func sendUDP(t testing.TB, c *net.UDPConn, n, size int, reply uint32) {
	t.Helper()
	buf := make([]byte, max(size, 4))
	binary.BigEndian.PutUint32(buf, reply)
	for i := range n {
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
}

// collect enriches records of conn until want drops were taken or the
// deadline, then once more after a pause, so a late extra drop would show.
func collect(t *testing.T, d *Drops, conn flow.Conn, want uint64) (fwd, rev uint64, reasons map[string]bool) {
	t.Helper()
	reasons = map[string]bool{}
	take := func() {
		r := flow.Record{Conn: conn}
		d.Enrich(&r)
		fwd += uint64(r.Health.FwdDrops)
		rev += uint64(r.Health.RevDrops)
		if r.Health.DropReason != "" {
			reasons[r.Health.DropReason] = true
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for fwd+rev < want && time.Now().Before(deadline) {
		take()
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	take()
	return fwd, rev, reasons
}

func udpConn(t *testing.T, c *net.UDPConn, dst netip.AddrPort) flow.Conn {
	t.Helper()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	return flow.Conn{Tuple: flow.NewTuple(local.Addr(), dst.Addr(), local.Port(), dst.Port(), flow.ProtoUDP)}
}

// TestNetfilterDropPerDirection: datagrams dropped by an nft rule in the
// node between two pods show up in their flow's record, in the direction
// they went, with the kernel's reason, as many as the rule counted.
func TestNetfilterDropPerDirection(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "ipv4"
		if v6 {
			name = "ipv6"
		}
		t.Run(name, func(t *testing.T) { testNetfilterDropPerDirection(t, v6) })
	}
}

func testNetfilterDropPerDirection(t *testing.T, v6 bool) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdrop", IPv6: v6, Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ListenUDP(7000)
	if err != nil {
		t.Fatal(err)
	}
	family, aIP, bIP, dst := "ip", a.IPv4, b.IPv4, srv.Addr()
	if v6 {
		family, aIP, bIP, dst = "ip6", a.IPv6, b.IPv6, b.Addr6(srv.Port())
	}
	// Requests of 100 payload bytes are dropped on the way to b; replies
	// of 50 bytes on the way back to a.
	nft(t, node, fmt.Sprintf(`table inet %[1]s {
	counter cfwd {}
	counter crev {}
	chain forward {
		type filter hook forward priority 0; policy accept;
		%[4]s saddr %[2]s %[4]s daddr %[3]s udp dport 7000 udp length 108 counter name cfwd drop
		%[4]s saddr %[3]s %[4]s daddr %[2]s udp sport 7000 udp length 58 counter name crev drop
	}
}
`, nftTestTable, aIP, bIP, family))
	d, reg, _ := startDrops(t, Config{}, nil)
	before := metric(t, reg, "flowlens_packetdrops_total", "NETFILTER_DROP")

	c, err := a.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const nFwd, nRev = 37, 23
	sendUDP(t, c, nFwd, 100, 0) // dropped requests
	sendUDP(t, c, nRev, 4, 50)  // requests pass, replies dropped
	sendUDP(t, c, 5, 20, 0)     // pass both ways: no drop
	waitFor(t, func() bool { return srv.Stats().Conns == nRev+5 }, "server saw the passing requests")
	ruleFwd, ruleRev := nftCounter(t, node, "cfwd"), nftCounter(t, node, "crev")
	if ruleFwd != nFwd || ruleRev != nRev {
		t.Fatalf("rules counted %d/%d, sent %d/%d into them", ruleFwd, ruleRev, nFwd, nRev)
	}
	conn := udpConn(t, c, dst)
	if conn.Tuple.IsIPv4() == v6 {
		t.Fatalf("socket tuple %v is not of the family under test", conn.Tuple)
	}
	fwd, rev, reasons := collect(t, d, conn, ruleFwd+ruleRev)
	if fwd != ruleFwd || rev != ruleRev {
		t.Errorf("record drops fwd %d rev %d, the rules dropped %d and %d", fwd, rev, ruleFwd, ruleRev)
	}
	if len(reasons) != 1 || !reasons["NETFILTER_DROP"] {
		t.Errorf("reasons %v, want NETFILTER_DROP", reasons)
	}
	// The per-reason total counts them too (other tests' drops may add).
	waitFor(t, func() bool {
		return metric(t, reg, "flowlens_packetdrops_total", "NETFILTER_DROP")-before >= float64(ruleFwd+ruleRev)
	}, "flowlens_packetdrops_total{reason=NETFILTER_DROP} counted the rules' drops")
	if got := metric(t, reg, "flowlens_packetdrops_attributed_total", "NETFILTER_DROP"); got != float64(ruleFwd+ruleRev) {
		t.Errorf("attributed{NETFILTER_DROP} = %v, want %d", got, ruleFwd+ruleRev)
	}
}

// TestServiceDropThroughForm: a Service flow's request dropped before
// DNAT (addressed to the VIP) and its reply dropped after the reverse
// translation (from the VIP) are attributed through the connection's
// VIP form, fwd and rev.
func TestServiceDropThroughForm(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdsvc", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ListenUDP(5353)
	if err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Port: 53, TargetPort: 5353, Proto: flow.ProtoUDP, Backend: b})
	nft(t, node, fmt.Sprintf(`table inet %[1]s {
	counter pre {}
	counter post {}
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		ip daddr %[2]s udp dport 53 udp length 108 counter name pre drop
	}
	chain post {
		type filter hook postrouting priority srcnat + 100; policy accept;
		ip saddr %[2]s udp sport 53 udp length 58 counter name post drop
	}
}
`, nftTestTable, svc.VIP))
	d, _, _ := startDrops(t, Config{}, nil)
	c, err := a.DialUDP(svc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendUDP(t, c, 1, 4, 0)    // passes: the connection exists, DNATed
	sendUDP(t, c, 11, 100, 0) // dropped to the VIP, before DNAT
	sendUDP(t, c, 13, 4, 50)  // replies dropped from the VIP, after un-DNAT
	waitFor(t, func() bool { return srv.Stats().Conns == 14 }, "backend saw the passing requests")
	pre, post := nftCounter(t, node, "pre"), nftCounter(t, node, "post")
	if pre != 11 || post != 13 {
		t.Fatalf("rules counted %d/%d, want 11/13", pre, post)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	ep := svc.Endpoint()
	conn := flow.Conn{
		Tuple:       flow.NewTuple(local.Addr(), ep.Addr(), local.Port(), ep.Port(), flow.ProtoUDP),
		OrigDstIP:   svc.VIP.As16(),
		OrigDstPort: svc.Port,
	}
	// The connection as conntrack tracked it.
	out, err := node.Conntrack("-L", "-p", "udp", "--orig-dst", svc.VIP.String())
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("sport=%d", local.Port())) {
		t.Fatalf("conntrack has no DNATed entry for %s: %v %s", local, err, out)
	}
	fwd, rev, reasons := collect(t, d, conn, pre+post)
	if fwd != pre || rev != post {
		t.Errorf("record drops fwd %d rev %d, rules dropped %d before DNAT and %d after un-DNAT", fwd, rev, pre, post)
	}
	if !reasons["NETFILTER_DROP"] || len(reasons) != 1 {
		t.Errorf("reasons %v, want NETFILTER_DROP", reasons)
	}
}

// TestUnownedDropsUnattributed: drops of a tuple no record asks for are
// counted unattributed when the TTL ends.
func TestUnownedDropsUnattributed(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdun", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	nft(t, node, fmt.Sprintf(`table inet %[1]s {
	counter c {}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s udp dport 9999 counter name c drop
	}
}
`, nftTestTable, a.IPv4))
	var clock atomic.Int64
	d, reg, _ := startDrops(t, Config{TTL: time.Minute}, &clock)
	dst := b.Addr(9999)
	c, err := a.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendUDP(t, c, 17, 10, 0)
	want := nftCounter(t, node, "c")
	if want != 17 {
		t.Fatalf("rule counted %d, sent 17", want)
	}
	key := udpConn(t, c, dst).Tuple
	pendingOf := func() uint32 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.tab.entries[key].n
	}
	waitFor(t, func() bool { return uint64(pendingOf()) == want }, "the drops pending under their tuple")
	before := metric(t, reg, "flowlens_packetdrops_unattributed_total", "NETFILTER_DROP")
	clock.Store(int64(2 * time.Minute))
	waitFor(t, func() bool { return pendingOf() == 0 }, "the tuple expired")
	got := metric(t, reg, "flowlens_packetdrops_unattributed_total", "NETFILTER_DROP") - before
	// Other tuples' drops may expire at the same moment (the machine is
	// shared); ours are in it.
	if got < float64(want) {
		t.Errorf("unattributed{NETFILTER_DROP} grew by %v, want at least the %d expired", got, want)
	}
	r := flow.Record{Conn: udpConn(t, c, dst)}
	d.Enrich(&r)
	if r.Health.FwdDrops != 0 {
		t.Errorf("expired drops still attributed: %+v", r.Health)
	}
}

// TestRateBound: a flood over the per-CPU bound passes at most the bound
// up and counts the rest as rate limited; every drop the rule made is in
// the record or in the rate-limited/ring-full counters.
func TestRateBound(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdrate", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	nft(t, node, fmt.Sprintf(`table inet %[1]s {
	counter c {}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s udp dport 9998 counter name c drop
	}
}
`, nftTestTable, a.IPv4))
	const rate, burst = 100, 20
	d, reg, stop := startDrops(t, Config{RatePerCPU: rate, Burst: burst}, nil)
	dst := b.Addr(9998)
	c, err := a.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	sendUDP(t, c, 5000, 10, 0)
	elapsed := time.Since(start)
	dropped := nftCounter(t, node, "c")
	conn := udpConn(t, c, dst)
	time.Sleep(500 * time.Millisecond)
	fwd, _, _ := collect(t, d, conn, 0)
	ncpu := len(d.percpu)
	bound := uint64(ncpu) * (burst + uint64(rate*(elapsed+time.Second).Seconds()))
	if fwd == 0 || fwd > bound {
		t.Errorf("%d drops passed up of %d in %s; bound %d (%d CPUs, %d/s, burst %d)", fwd, dropped, elapsed, bound, ncpu, rate, burst)
	}
	stop() // Run's last round reads the kernel counters
	limited := metric(t, reg, "flowlens_packetdrops_rate_limited_total", "NETFILTER_DROP")
	ringFull := metric(t, reg, "flowlens_packetdrops_ring_full_total", "NETFILTER_DROP")
	if limited < float64(dropped-fwd) {
		t.Errorf("rate limited %v + ring full %v, want at least the %d not passed up", limited, ringFull, dropped-fwd)
	}
	t.Logf("rule dropped %d in %s: %d passed up, %v rate limited (NETFILTER_DROP, all tuples)", dropped, elapsed, fwd, limited)
}

// TestAccountingIdentity: after the program is detached and its ring
// drained, every drop it counted (all reasons, all of the machine's
// traffic) is attributed, unattributed, rate limited, refused by the
// ring, or pending.
func TestAccountingIdentity(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdacc", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	nft(t, node, fmt.Sprintf(`table inet %[1]s {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s udp dport 9997 drop
	}
}
`, nftTestTable, a.IPv4))
	d, reg, stop := startDrops(t, Config{RatePerCPU: 200, Burst: 50}, nil)
	dst := b.Addr(9997)
	c, err := a.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendUDP(t, c, 3000, 10, 0)
	collect(t, d, udpConn(t, c, dst), 1)
	if err := d.lnk.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // Run drains the ring
	stop()
	sum := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var s float64
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.Metric {
					s += m.Counter.GetValue()
				}
			}
		}
		return s
	}
	d.mu.Lock()
	var pending float64
	for _, p := range d.tab.entries {
		pending += float64(p.n)
	}
	d.mu.Unlock()
	total := sum("flowlens_packetdrops_total")
	parts := map[string]float64{
		"attributed":   sum("flowlens_packetdrops_attributed_total"),
		"unattributed": sum("flowlens_packetdrops_unattributed_total"),
		"rate_limited": sum("flowlens_packetdrops_rate_limited_total"),
		"ring_full":    sum("flowlens_packetdrops_ring_full_total"),
		"pending":      pending,
	}
	var s float64
	for _, v := range parts {
		s += v
	}
	if total < 3000 || s != total {
		t.Errorf("total %v, parts %v sum to %v", total, parts, s)
	}
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIgnoredReasonsFiltered: with the default Config the normal teardown
// of TCP connections (QUEUE_PURGE: a FIN left unread in a socket's queue
// when it is destroyed) is counted as filtered in the kernel and never
// reaches the table; with it kept, the same traffic is passed up under
// the connections' tuples.
func TestIgnoredReasonsFiltered(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "pdign", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ServeHTTP(8080)
	if err != nil {
		t.Fatal(err)
	}
	requests := func() {
		t.Helper()
		for range 10 {
			if _, err := a.HTTPGet("http://" + srv.Addr().String() + "/"); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The pods' tuples with drops pending, by reason name.
	podReasons := func(d *Drops) map[string]int {
		d.mu.Lock()
		defer d.mu.Unlock()
		out := map[string]int{}
		for k, p := range d.tab.entries {
			if k.Src() == a.IPv4 || k.Src() == b.IPv4 {
				p.each(func(reason, n uint32) { out[d.names.name(reason)] += int(n) })
			}
		}
		return out
	}

	d, reg, stop := startDrops(t, Config{}, nil)
	requests()
	time.Sleep(1500 * time.Millisecond) // a housekeeping round reads the counters
	stop()
	if got := metric(t, reg, "flowlens_packetdrops_filtered_total", "QUEUE_PURGE"); got < 10 {
		t.Errorf("filtered{QUEUE_PURGE} = %v after 10 connections, want at least 10", got)
	}
	for _, r := range []string{"QUEUE_PURGE", "CONSUMED", "NOT_SPECIFIED"} {
		if got := metric(t, reg, "flowlens_packetdrops_total", r); got != 0 {
			t.Errorf("total{%s} = %v with the reason ignored", r, got)
		}
	}
	if got := podReasons(d); len(got) != 0 {
		t.Errorf("pods' drops pending with default filters: %v", got)
	}

	// Kept, the same teardown is passed up under the pods' tuples.
	d, _, _ = startDrops(t, Config{IgnoreReasons: []string{}}, nil)
	requests()
	waitFor(t, func() bool { return podReasons(d)["QUEUE_PURGE"] >= 10 }, "QUEUE_PURGE passed up when kept")
}
