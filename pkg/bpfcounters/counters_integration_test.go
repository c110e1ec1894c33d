//go:build integration

package bpfcounters

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/pkg/podlinks"
	"github.com/flowlens/flowlens/test/netnstest"
)

// env is a node with a client and a server pod, flow counters attached to
// every pod-facing interface the podlinks watcher reports, and the node's
// conntrack table to compare with.
type env struct {
	node           *netnstest.Node
	client, server *netnstest.Pod
	c              *Counters
	ct             *conntrack.Source

	mu       sync.Mutex
	attached map[string]int // host veth name -> ifindex
	errs     []error
}

func newEnv(t *testing.T, cfg Config, ipv6 bool) *env {
	t.Helper()
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "bpfc", IPv6: ipv6,
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	e := &env{node: node, client: node.Pod("client"), server: node.Pod("server"), attached: map[string]int{}}
	if !ipv6 {
		// No IPv6 at all: link-local MLD and ND chatter would otherwise
		// be counted at random times, and the idle-round checks need a
		// quiet node.
		for _, path := range []string{node.NetnsPath, e.client.NetnsPath, e.server.NetnsPath} {
			for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
				if err := netns.WriteSysctl(path, k, "1"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.c = c
	ct, err := conntrack.New(conntrack.Config{NetNSPath: node.NetnsPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.ct = ct
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- podlinks.Watch(ctx, node.NetnsPath, []string{"flc"}, func(ev podlinks.Event) {
			var err error
			if ev.Kind == podlinks.Added {
				err = c.Attach(ev.Ifindex, ev.NetnsPath)
			} else {
				err = c.Detach(ev.Ifindex, ev.NetnsPath)
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if err != nil {
				e.errs = append(e.errs, err)
				return
			}
			if ev.Kind == podlinks.Added {
				e.attached[ev.Name] = ev.Ifindex
			} else {
				delete(e.attached, ev.Name)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("podlinks watch: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("close counters: %v", err)
		}
		ct.Close()
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, err := range e.errs {
			t.Errorf("attach/detach: %v", err)
		}
	})
	e.waitAttached(t, e.client.HostVeth, e.server.HostVeth)
	return e
}

func (e *env) waitAttached(t *testing.T, names ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		missing := []string{}
		for _, n := range names {
			if _, ok := e.attached[n]; !ok {
				missing = append(missing, n)
			}
		}
		errs := e.errs
		e.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("attach: %v", errs)
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("interfaces %v not attached after 10s (attached: %v)", missing, e.attachedNames())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) attachedNames() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for n := range e.attached {
		out = append(out, n)
	}
	return out
}

// ctConn finds the conntrack entry of a client socket.
func (e *env) ctConn(t *testing.T, proto uint8, local netip.AddrPort) (flow.Conn, bool) {
	t.Helper()
	var found flow.Conn
	ok := false
	err := e.ct.Dump(func(c *flow.Conn) {
		if c.Tuple.Proto == proto && c.Tuple.Src() == local.Addr().Unmap() && c.Tuple.SrcPort == local.Port() {
			found, ok = *c, true
		}
	})
	if err != nil {
		t.Fatalf("conntrack dump: %v", err)
	}
	return found, ok
}

// matchConntrack waits (packets may still be in flight) until Fill of the
// client socket's connection gives exactly conntrack's counters, and
// returns both.
func (e *env) matchConntrack(t *testing.T, proto uint8, local netip.AddrPort) (ct, filled flow.Conn, res FillResult) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		ct, ok = e.ctConn(t, proto, local)
		if ok {
			filled = ct
			var err error
			res, err = e.c.Fill(&filled)
			if err != nil {
				t.Fatalf("Fill: %v", err)
			}
			if res.Seen && filled.Fwd == ct.Fwd && filled.Rev == ct.Rev {
				return ct, filled, res
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s from %s: conntrack found %v: fwd %+v rev %+v; eBPF seen %v: fwd %+v rev %+v",
				flow.ProtoName(proto), local, ok, ct.Fwd, ct.Rev, res.Seen, filled.Fwd, filled.Rev)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCountersMatchConntrack(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, Config{Attach: mode}, true)
			e.c.attachMu.Lock()
			for k, a := range e.c.attached {
				if a.Mode() != mode {
					t.Errorf("ifindex %d attached with %s, want %s", k.ifindex, a.Mode(), mode)
				}
			}
			e.c.attachMu.Unlock()
			if _, err := e.server.ListenTCP(8080); err != nil {
				t.Fatal(err)
			}
			if _, err := e.server.ListenUDP(5353); err != nil {
				t.Fatal(err)
			}
			before := time.Now().UnixNano()
			for _, tc := range []struct {
				name  string
				ipv6  bool
				proto uint8
			}{{"tcp4", false, flow.ProtoTCP}, {"udp4", false, flow.ProtoUDP}, {"tcp6", true, flow.ProtoTCP}, {"udp6", true, flow.ProtoUDP}} {
				t.Run(tc.name, func(t *testing.T) {
					port, target := uint16(80), uint16(8080)
					if tc.proto == flow.ProtoUDP {
						port, target = 53, 5353
					}
					svc := netnstest.AddServiceT(t, e.node, netnstest.Service{IPv6: tc.ipv6, Port: port, TargetPort: target, Proto: tc.proto, Backend: e.server})
					var tr netnstest.Transfer
					var err error
					const sent, reply = 3<<20 + 17, 1<<20 + 5
					if tc.proto == flow.ProtoTCP {
						tr, err = netnstest.SendExactly(e.client, svc.Addr(), sent, reply)
					} else {
						tr, err = netnstest.SendUDP(e.client, svc.Addr(), 300_000, 120_000)
					}
					if err != nil {
						t.Fatal(err)
					}
					ct, filled, res := e.matchConntrack(t, tc.proto, tr.Local)
					if !ct.IsDNATed() {
						t.Fatalf("connection %s not DNATed", ct.Tuple)
					}
					if uint64(tr.Sent) > filled.Fwd.Bytes || uint64(tr.Received) > filled.Rev.Bytes {
						t.Errorf("payload sent %d / received %d exceeds counted bytes %d / %d", tr.Sent, tr.Received, filled.Fwd.Bytes, filled.Rev.Bytes)
					}
					if res.Lossy {
						t.Errorf("lossy without loss")
					}
					if res.AttachedAt == 0 || res.AttachedAt > before {
						t.Errorf("AttachedAt %d, want the attach before the transfer (< %d)", res.AttachedAt, before)
					}
					if res.LastNanos < before || res.LastNanos > time.Now().UnixNano() {
						t.Errorf("LastNanos %s outside the test", time.Unix(0, res.LastNanos))
					}
					if tc.proto == flow.ProtoTCP && !res.Finished {
						t.Errorf("TCP exchange closed with FIN both ways: not Finished")
					}
					if tc.proto == flow.ProtoUDP && res.Finished {
						t.Errorf("UDP Finished")
					}
					t.Logf("%s: sent %d received %d; conntrack = eBPF: fwd %+v rev %+v", ct.Tuple, tr.Sent, tr.Received, filled.Fwd, filled.Rev)
				})
			}
		})
	}
}

// TestPodAddedLater: an interface that appears after the watcher started is
// attached and counted; one that goes is detached.
func TestPodAddedLater(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC} {
		t.Run(mode, func(t *testing.T) { testPodAddedLater(t, mode) })
	}
}

func testPodAddedLater(t *testing.T, mode string) {
	e := newEnv(t, Config{Attach: mode}, false)
	if _, err := e.server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, e.node, netnstest.Service{Port: 80, TargetPort: 8080, Backend: e.server})
	late, err := e.node.AddPod(netnstest.PodSpec{Name: "late"})
	if err != nil {
		t.Fatal(err)
	}
	e.waitAttached(t, late.HostVeth)
	tr, err := netnstest.SendExactly(late, svc.Addr(), 200_000, 50_000)
	if err != nil {
		t.Fatal(err)
	}
	ct, _, _ := e.matchConntrack(t, flow.ProtoTCP, tr.Local)
	// The new pod's own interface counted its packets: its sender-side view
	// exists (not only the server's).
	v := viewsOf(&ct)
	var val bpfFlowVal
	if ok, err := e.c.table.lookup(&v.fwd[0], &val); err != nil || !ok {
		t.Fatalf("late pod's sender-side view %s not counted (%v)", viewOf(&v.fwd[0]), err)
	}
	e.mu.Lock()
	idx := e.attached[late.HostVeth]
	e.mu.Unlock()
	if val.Ifindex != uint32(idx) {
		t.Errorf("view first seen on ifindex %d, want the late pod's %d", val.Ifindex, idx)
	}
	// The pod goes: its interface is detached (the cleanup fails the test
	// on a detach error).
	if out, err := exec.Command("ip", "-n", e.node.NetnsName, "link", "del", late.HostVeth).CombinedOutput(); err != nil {
		t.Fatalf("delete %s: %v: %s", late.HostVeth, err, out)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		e.mu.Lock()
		_, still := e.attached[late.HostVeth]
		e.mu.Unlock()
		if !still {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%s deleted but still attached", late.HostVeth)
		}
	}
	e.c.attachMu.Lock()
	n := len(e.c.attached)
	e.c.attachMu.Unlock()
	if n != 2 {
		t.Errorf("%d interfaces attached after the pod went, want 2", n)
	}
}

// TestBridgedPod: a pod behind a Linux bridge (its veth a bridge port) is
// found by podlinks and counted like a routed one.
func TestBridgedPod(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, e.node, netnstest.Service{Port: 80, TargetPort: 8080, Backend: e.server})
	podNs := e.node.NetnsName + "-br"
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", podNs)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", podNs).Run() })
	n := e.node.NetnsName
	sh("ip", "-n", n, "link", "add", "flbr0", "type", "bridge")
	sh("ip", "-n", n, "addr", "add", "192.168.77.1/24", "dev", "flbr0")
	sh("ip", "-n", n, "link", "set", "flbr0", "up")
	sh("ip", "-n", n, "link", "add", "vethbr0", "type", "veth", "peer", "name", "eth0", "netns", podNs)
	sh("ip", "-n", n, "link", "set", "vethbr0", "master", "flbr0", "up")
	// A capture veth of a future mirror: excluded by its prefix.
	sh("ip", "-n", n, "link", "add", "flcmirror", "type", "veth", "peer", "name", "m0", "netns", podNs)
	sh("ip", "-n", podNs, "addr", "add", "192.168.77.2/24", "dev", "eth0")
	sh("ip", "-n", podNs, "link", "set", "eth0", "up")
	sh("ip", "-n", podNs, "link", "set", "lo", "up")
	sh("ip", "-n", podNs, "route", "add", "default", "via", "192.168.77.1")
	e.waitAttached(t, "vethbr0")
	time.Sleep(200 * time.Millisecond)
	for _, name := range e.attachedNames() {
		if strings.HasPrefix(name, "flc") || name == "flbr0" {
			t.Errorf("%s attached: not a pod-facing interface", name)
		}
	}
	bridged := &netnstest.Pod{Name: "br", Namespace: "default", NetnsName: podNs, NetnsPath: netnstest.NetnsDir + "/" + podNs}
	tr, err := netnstest.SendExactly(bridged, svc.Addr(), 500_000, 70_000)
	if err != nil {
		t.Fatal(err)
	}
	e.matchConntrack(t, flow.ProtoTCP, tr.Local)
	idx, name, err := podlinks.HostLink(e.node.NetnsPath, netip.MustParseAddr("192.168.77.2"))
	if err != nil || name != "vethbr0" {
		t.Errorf("HostLink of the bridged pod: %d %q %v, want vethbr0", idx, name, err)
	}
	if _, name, err := podlinks.HostLink(e.node.NetnsPath, e.client.IPv4); err != nil || name != e.client.HostVeth {
		t.Errorf("HostLink of the routed pod: %q %v, want %s", name, err, e.client.HostVeth)
	}
}

// TestReadChanged: a round reports each changed view once, an idle round
// reports nothing, and FIN/RST show as fin.
func TestReadChanged(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, e.node, netnstest.Service{Port: 80, TargetPort: 8080, Backend: e.server})
	if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil { // whatever came before
		t.Fatal(err)
	}
	round := func() map[flow.Tuple]bool {
		t.Helper()
		got := map[flow.Tuple]bool{}
		err := e.c.ReadChanged(func(v flow.Tuple, fin bool) {
			if _, dup := got[v]; dup {
				t.Errorf("view %s reported twice in one round", v)
			}
			got[v] = fin
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	tr, err := netnstest.SendExactly(e.client, svc.Addr(), 100_000, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	ct, _, _ := e.matchConntrack(t, flow.ProtoTCP, tr.Local)
	counting := &countingTable{table: e.c.table}
	e.c.table = counting
	got := round()
	// Only the sender-side views are read (the receiver-side ones would
	// only be used without them), and Fill then needs no lookup.
	if counting.lookups != 2 {
		t.Errorf("the round made %d lookups for a connection between two local pods, want its 2 sender-side views", counting.lookups)
	}
	if res, err := e.c.Fill(&ct); err != nil || !res.Seen || ct.Fwd.Bytes < 100_000 || ct.Rev.Bytes < 10_000 {
		t.Errorf("Fill after the round: %+v %v, fwd %+v rev %+v", res, err, ct.Fwd, ct.Rev)
	}
	if counting.lookups != 2 {
		t.Errorf("Fill after the round made %d more lookups, want none", counting.lookups-2)
	}
	v := viewsOf(&ct)
	// Both pods are local: each direction is counted where its sender's
	// packets enter the node, and not again where they leave toward the
	// other pod (the program's senders set).
	for _, k := range []bpfFlowKey{v.fwd[0], v.rev[0]} {
		fin, ok := got[viewOf(&k)]
		if !ok {
			t.Errorf("view %s hook %d not reported (got %v)", viewOf(&k), k.Hook, got)
		}
		if !fin {
			t.Errorf("view %s: FIN not reported", viewOf(&k))
		}
	}
	if len(got) != 2 {
		t.Errorf("round reported %d views, want the connection's 2 sender-side ones: %v", len(got), got)
	}
	var val bpfFlowVal
	for _, k := range []bpfFlowKey{v.fwd[1], v.rev[1]} {
		if err := e.c.objs.Flows.Lookup(&k, &val); err == nil {
			t.Errorf("receiver-side view %s counted too (%d packets) although its sender's interface counted them", viewOf(&k), val.Packets)
		}
	}
	if idle := round(); len(idle) != 0 {
		t.Errorf("idle round reported %d views: %v", len(idle), idle)
	}

	// A RST: a connection refused by the server pod.
	if _, err := e.client.DialTCP(e.server.Addr(9)); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	time.Sleep(100 * time.Millisecond)
	got = round()
	var rstView flow.Tuple
	for v, fin := range got {
		if v.Proto == flow.ProtoTCP && v.SrcPort == 9 && v.Src() == e.server.IPv4 {
			rstView = v
			if !fin {
				t.Errorf("RST view %s: fin false", v)
			}
		}
	}
	if rstView == (flow.Tuple{}) {
		t.Fatalf("RST view not reported: %v", got)
	}
	// conntrack deletes an entry whose only reply is a RST at once (the
	// agent learns it from the DESTROY event): build the connection.
	rst := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, rstView.DstPort, 9, flow.ProtoTCP)}
	rst.OrigDstIP, rst.OrigDstPort = rst.Tuple.DstIP, 9
	if res, err := e.c.Fill(&rst); err != nil || !res.Finished || !res.Seen {
		t.Errorf("refused connection %s: Fill %+v %v, want seen and finished", rst.Tuple, res, err)
	}
	if err := e.c.Forget(&rst); err != nil {
		t.Fatal(err)
	}
	if res, _ := e.c.Fill(&rst); res.Seen {
		t.Errorf("views still there after Forget")
	}
	if idle := round(); len(idle) != 0 {
		t.Errorf("idle round reported %v", idle)
	}

	// Sweep: nothing is old enough yet; everything unowned is, with 0.
	if n, err := e.c.Sweep(time.Hour, func(flow.Tuple) bool { return false }); err != nil || n != 0 {
		t.Errorf("Sweep(1h) = %d, %v; want 0", n, err)
	}
	owned := func(v flow.Tuple) bool { return v.SrcPort == tr.Local.Port() || v.DstPort == tr.Local.Port() }
	n, err := e.c.Sweep(0, owned)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := e.c.Fill(&ct); !res.Seen {
		t.Errorf("Sweep deleted a live connection's views")
	}
	t.Logf("swept %d unowned entries", n)
}

// TestMapFull: inserts that do not fit are counted and make their
// connection Lossy.
func TestMapFull(t *testing.T) {
	// Two pods of the node: a connection takes two entries (one per
	// direction, where its sender's packets enter the node), so two fit.
	e := newEnv(t, Config{MapEntries: 4}, false)
	if _, err := e.server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	var trs []netnstest.Transfer
	for range 5 {
		tr, err := netnstest.SendExactly(e.client, e.server.Addr(8080), 10_000, 1000)
		if err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
	}
	time.Sleep(100 * time.Millisecond)
	if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil {
		t.Fatal(err)
	}
	if full := counterValue(e.c.metrics.kernel[statMapFull]); full == 0 {
		t.Fatalf("map of 4 entries and 5 connections of 2 views: no map-full counted")
	}
	lossy := 0
	for _, tr := range trs {
		ct, ok := e.ctConn(t, flow.ProtoTCP, tr.Local)
		if !ok {
			t.Fatalf("no conntrack entry for %s", tr.Local)
		}
		res, err := e.c.Fill(&ct)
		if err != nil {
			t.Fatal(err)
		}
		if res.Lossy {
			lossy++
		}
	}
	if lossy < 3 {
		t.Errorf("%d of 5 connections lossy, want at least the 3 that did not fit", lossy)
	}
	t.Logf("map full %v, lost keys %v, lossy connections %d",
		counterValue(e.c.metrics.kernel[statMapFull]), counterValue(e.c.metrics.lostKeys), lossy)
}

// TestReadChangedNoAllocs: a steady-state round does not allocate per key.
func TestReadChangedNoAllocs(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	send := func(port int) {
		if _, err := netnstest.SendUDP(e.client, e.server.Addr(5353), port, 0); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		n := 0
		if err := e.c.ReadChanged(func(flow.Tuple, bool) { n++ }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	round := func(flows int) (keys int, allocs uint64) {
		for i := range flows {
			send(i + 1)
		}
		time.Sleep(50 * time.Millisecond)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		keys = count()
		runtime.ReadMemStats(&after)
		return keys, after.Mallocs - before.Mallocs
	}
	// Warm the scratch buffers up with the largest round (twice: the
	// values of the last two rounds are kept, in two maps taking turns).
	round(200)
	round(200)
	count()
	small, smallAllocs := round(20)
	large, largeAllocs := round(200)
	if small < 15 || large < 150 { // an ephemeral port may be reused within a batch
		t.Fatalf("rounds reported %d and %d views, want >= 15 and >= 150", small, large)
	}
	// A round's fixed cost (epoch write, per-CPU stats) allocates a few
	// times; keys must add nothing.
	if largeAllocs > smallAllocs+2 {
		t.Errorf("round of %d keys allocated %d times, of %d keys %d: allocations grow with keys", small, smallAllocs, large, largeAllocs)
	}
	t.Logf("round of %d keys: %d allocations; of %d keys: %d", small, smallAllocs, large, largeAllocs)
	var conn flow.Conn
	if a := testing.AllocsPerRun(100, func() { _, _ = e.c.Fill(&conn) }); a > 0 {
		t.Errorf("Fill allocates %.0f times", a)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(fmt.Sprintf("read counter: %v", err))
	}
	return m.GetCounter().GetValue()
}

// TestRingFull: more changed keys than the ring holds are still all
// reported, through a walk of the map, and the overflow is counted.
func TestRingFull(t *testing.T) {
	e := newEnv(t, Config{RingBytes: 4096}, false) // ~70 records
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil {
		t.Fatal(err)
	}
	var sent []netip.AddrPort
	for i := range 300 {
		tr, err := netnstest.SendUDP(e.client, e.server.Addr(5353), i+1, 0)
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, tr.Local)
	}
	time.Sleep(50 * time.Millisecond)
	got := map[flow.Tuple]bool{}
	if err := e.c.ReadChanged(func(v flow.Tuple, _ bool) { got[v] = true }); err != nil {
		t.Fatal(err)
	}
	for _, l := range sent {
		v := flow.NewTuple(l.Addr(), e.server.IPv4, l.Port(), 5353, flow.ProtoUDP)
		if !got[v] {
			t.Errorf("view %s not reported after the ring overflowed", v)
		}
	}
	if rf := counterValue(e.c.metrics.kernel[statRingFull]); rf == 0 {
		t.Errorf("ring of 4 KiB and 300 new keys: no overflow counted")
	}
	if w := counterValue(e.c.metrics.fullWalks); w != 1 {
		t.Errorf("full walks %v, want 1", w)
	}
	// The walk happens once: the next quiet round reports nothing.
	n := 0
	if err := e.c.ReadChanged(func(flow.Tuple, bool) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("round after the walk reported %d views", n)
	}
	t.Logf("ring full %v, views %d", counterValue(e.c.metrics.kernel[statRingFull]), len(got))
}

// TestICMPEcho: echo requests and replies are counted under the tuple
// pkg/conntrack makes of an ICMP entry (identifier, type<<8|code), so Fill
// of the conntrack entry finds them and matches its counters.
func TestICMPEcho(t *testing.T) {
	e := newEnv(t, Config{}, true)
	for _, tc := range []struct {
		name    string
		network string
		listen  string
		proto   uint8
		dst     netip.Addr
		src     netip.Addr
		typ     icmp.Type
	}{
		{"icmp4", "ip4:icmp", "0.0.0.0", flow.ProtoICMP, e.server.IPv4, e.client.IPv4, ipv4.ICMPTypeEcho},
		{"icmp6", "ip6:ipv6-icmp", "::", flow.ProtoICMPv6, e.server.IPv6, e.client.IPv6, ipv6.ICMPTypeEchoRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pc *icmp.PacketConn
			err := e.client.Run(func() error {
				var err error
				pc, err = icmp.ListenPacket(tc.network, tc.listen)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			const id, count = 0x4242, 5
			for seq := range count {
				msg := icmp.Message{Type: tc.typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, 100)}}
				b, err := msg.Marshal(nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := pc.WriteTo(b, &net.IPAddr{IP: tc.dst.AsSlice()}); err != nil {
					t.Fatal(err)
				}
			}
			replies := 0
			buf := make([]byte, 1500)
			_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
			for replies < count {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					t.Fatalf("echo replies: %d of %d: %v", replies, count, err)
				}
				m, err := icmp.ParseMessage(int(tc.proto), buf[:n])
				if err != nil {
					continue
				}
				if echo, ok := m.Body.(*icmp.Echo); ok && echo.ID == id && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) {
					replies++
				}
			}
			ct, filled, _ := e.matchConntrack(t, tc.proto, netip.AddrPortFrom(tc.src, id))
			reqType := uint16(8) << 8
			if tc.proto == flow.ProtoICMPv6 {
				reqType = 128 << 8
			}
			if ct.Tuple.DstPort != reqType || filled.Fwd.Packets != count || filled.Rev.Packets != count {
				t.Errorf("%s: fwd %+v rev %+v, want %d echo requests and replies", ct.Tuple, filled.Fwd, filled.Rev, count)
			}
			t.Logf("%s: conntrack = eBPF: fwd %+v rev %+v", ct.Tuple, filled.Fwd, filled.Rev)
		})
	}
}

// Forget deletes a connection's views in one batch; the kernel stops a
// batch at a missing key, and the views after it must go all the same,
// while a view of another connection stays.
func TestForgetDeletesEveryViewAroundMissingOnes(t *testing.T) {
	e := newEnv(t, Config{}, false)
	eachTablePath(t, e, func(t *testing.T) { forgetAroundMissing(t, e) })
}

func forgetAroundMissing(t *testing.T, e *env) {
	conn := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, 40000, 80, flow.ProtoTCP)}
	conn.OrigDstIP, conn.OrigDstPort = netip.MustParseAddr("10.96.0.10").As16(), 8080
	v := viewsOf(&conn)
	keys := []bpfFlowKey{v.fwd[0], v.fwd[1], v.rev[0], v.rev[1]}
	other := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, 40001, 80, flow.ProtoTCP)}
	otherKey := viewsOf(&other).fwd[0]
	for _, missing := range []int{-1, 0, 1, 3} {
		for i := range keys {
			if i != missing {
				if err := e.c.objs.Flows.Put(&keys[i], &bpfFlowVal{Packets: 1, Bytes: 60}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := e.c.objs.Flows.Put(&otherKey, &bpfFlowVal{Packets: 1, Bytes: 60}); err != nil {
			t.Fatal(err)
		}
		if err := e.c.Forget(&conn); err != nil {
			t.Fatalf("Forget with view %d missing: %v", missing, err)
		}
		var val bpfFlowVal
		for i := range keys {
			if err := e.c.objs.Flows.Lookup(&keys[i], &val); err == nil {
				t.Errorf("view %d missing: view %d (%s) still there after Forget", missing, i, viewOf(&keys[i]))
			}
		}
		if err := e.c.objs.Flows.Lookup(&otherKey, &val); err != nil {
			t.Errorf("view %d missing: another connection's view went too: %v", missing, err)
		}
	}
}

// The read rounds' lookups bypass the library's marshalling: the Go
// structs must have the map's layout, and a lookup must read what the
// library reads.
func TestDirectLookupReadsWhatTheLibraryReads(t *testing.T) {
	e := newEnv(t, Config{}, false)
	mt, ok := e.c.table.(*mapTable)
	if !ok || !mt.direct {
		t.Fatalf("flow map lookups are not direct (table %T): the generated structs do not match the map", e.c.table)
	}
	conn := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, 40002, 80, flow.ProtoTCP)}
	k := viewsOf(&conn).fwd[0]
	want := bpfFlowVal{Packets: 7, Bytes: 4242, FirstNs: 11, LastNs: 99, Ifindex: 3, TcpFlags: tcpSYN}
	if err := e.c.objs.Flows.Put(&k, &want); err != nil {
		t.Fatal(err)
	}
	var got, lib bpfFlowVal
	if found, err := mt.lookup(&k, &got); err != nil || !found {
		t.Fatalf("direct lookup: found %v, %v", found, err)
	}
	if err := e.c.objs.Flows.Lookup(&k, &lib); err != nil {
		t.Fatal(err)
	}
	if got != want || lib != want {
		t.Errorf("direct lookup %+v, library %+v, want %+v", got, lib, want)
	}
	other := viewsOf(&conn).rev[0]
	if found, err := mt.lookup(&other, &got); err != nil || found {
		t.Errorf("direct lookup of a missing key: found %v, %v", found, err)
	}
}

// countingTable counts the lookups that reach the flow map.
type countingTable struct {
	table
	lookups int
}

func (t *countingTable) lookup(k *bpfFlowKey, v *bpfFlowVal) (bool, error) {
	t.lookups++
	return t.table.lookup(k, v)
}

// ForgetAll deletes the views of many connections, some missing, and
// leaves the others'.
func TestForgetAllDeletesEveryConnectionsViews(t *testing.T) {
	e := newEnv(t, Config{}, false)
	eachTablePath(t, e, func(t *testing.T) { forgetAllViews(t, e) })
}

func forgetAllViews(t *testing.T, e *env) {
	var conns []flow.Conn
	var keys []bpfFlowKey
	for i := range 5 {
		c := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, uint16(41000+i), 80, flow.ProtoTCP)}
		conns = append(conns, c)
		v := viewsOf(&c)
		for j, k := range []bpfFlowKey{v.fwd[0], v.fwd[1], v.rev[0], v.rev[1]} {
			if (i+j)%3 == 0 {
				continue // missing: the batch stops there and goes on
			}
			if err := e.c.objs.Flows.Put(&k, &bpfFlowVal{Packets: 1, Bytes: 60}); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
	}
	kept := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, 42000, 80, flow.ProtoTCP)}
	keptKey := viewsOf(&kept).fwd[0]
	if err := e.c.objs.Flows.Put(&keptKey, &bpfFlowVal{Packets: 1, Bytes: 60}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ForgetAll(conns); err != nil {
		t.Fatal(err)
	}
	var val bpfFlowVal
	for _, k := range keys {
		if err := e.c.objs.Flows.Lookup(&k, &val); err == nil {
			t.Errorf("view %s still there after ForgetAll", viewOf(&k))
		}
	}
	if err := e.c.objs.Flows.Lookup(&keptKey, &val); err != nil {
		t.Errorf("another connection's view went too: %v", err)
	}
}

// eachTablePath runs fn with the flow map's lookups and deletions made by
// the bulk programs, then by system calls (the path of kernels that cannot
// run them).
func eachTablePath(t *testing.T, e *env, fn func(t *testing.T)) {
	t.Helper()
	mt, ok := e.c.table.(*mapTable)
	if !ok || mt.bulk == nil {
		t.Fatalf("the bulk programs did not load on this kernel (table %T)", e.c.table)
	}
	bulk := mt.bulk
	t.Run("bulk", fn)
	mt.bulk = nil
	defer func() { mt.bulk = bulk }()
	t.Run("syscalls", fn)
}

// The bulk programs answer what a lookup answers and delete what a
// delete deletes, over more keys than one run takes and with missing keys
// among them.
func TestBulkProgramsAgreeWithTheMap(t *testing.T) {
	e := newEnv(t, Config{}, false)
	mt := e.c.table.(*mapTable)
	if mt.bulk == nil {
		t.Fatal("the bulk programs did not load on this kernel")
	}
	const n = 2*bulkSlots + 300
	keys := make([]bpfFlowKey, n)
	want := map[int]bpfFlowVal{}
	for i := range keys {
		c := flow.Conn{Tuple: flow.NewTuple(e.client.IPv4, e.server.IPv4, uint16(20000+i), 80, flow.ProtoTCP)}
		keys[i] = viewsOf(&c).fwd[0]
		if i%3 == 1 {
			continue // missing
		}
		v := bpfFlowVal{Packets: uint64(i), Bytes: uint64(i) * 100, FirstNs: uint64(i) + 1, LastNs: uint64(i) + 2, Ifindex: uint32(i), TcpFlags: uint32(i % 64), NotifiedEpoch: uint64(i) * 7}
		if err := e.c.objs.Flows.Put(&keys[i], &v); err != nil {
			t.Fatal(err)
		}
		want[i] = v
	}
	vals, found := make([]bpfFlowVal, n), make([]bool, n)
	if err := mt.lookupKeys(keys, vals, found); err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		w, ok := want[i]
		if found[i] != ok || (ok && vals[i] != w) {
			t.Fatalf("key %d: found %v %+v, want %v %+v", i, found[i], vals[i], ok, w)
		}
	}
	// Delete every other key: those present go, the others stay.
	var del []bpfFlowKey
	for i := 0; i < n; i += 2 {
		del = append(del, keys[i])
	}
	if err := mt.deleteKeys(del); err != nil {
		t.Fatal(err)
	}
	var v bpfFlowVal
	for i := range keys {
		_, present := want[i]
		err := e.c.objs.Flows.Lookup(&keys[i], &v)
		if gone := err != nil; gone != (i%2 == 0 || !present) {
			t.Errorf("key %d (present before %v): gone %v after deleting the even keys (%v)", i, present, gone, err)
		}
	}
}

// The program knows sender interfaces by ifindex, which names an interface
// in one namespace only: once interfaces of a second namespace are
// attached, the set is emptied and stays empty, and traffic between two
// local pods is counted at both ends again (the agent uses the sender's).
func TestSendersOnlyWithinOneNamespace(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	senders := func() int {
		n := 0
		var k uint32
		var v uint8
		it := e.c.objs.Senders.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for senders() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := senders(); n != 2 {
		t.Fatalf("%d sender interfaces, want the node's 2 pods'", n)
	}
	other := netnstest.NewNodeT(t, netnstest.Config{Name: "bpfo", Index: 2, Pods: []netnstest.PodSpec{{Name: "lone"}}})
	idx, _, err := podlinks.HostLink(other.NetnsPath, other.Pod("lone").IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.Attach(idx, other.NetnsPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.c.Detach(idx, other.NetnsPath) })
	if n := senders(); n != 0 {
		t.Errorf("%d sender interfaces with two namespaces attached, want none", n)
	}
	tr, err := netnstest.SendExactly(e.client, e.server.Addr(8080), 5000, 500)
	if err != nil {
		t.Fatal(err)
	}
	ct, _, _ := e.matchConntrack(t, flow.ProtoTCP, tr.Local)
	v := viewsOf(&ct)
	var val bpfFlowVal
	if err := e.c.objs.Flows.Lookup(&v.fwd[1], &val); err != nil {
		t.Errorf("receiver-side view not counted with two namespaces attached: %v", err)
	}
	if res, err := e.c.Fill(&ct); err != nil || !res.Seen || ct.Fwd.Bytes < 5000 || ct.Rev.Bytes < 500 {
		t.Errorf("Fill: %+v %v, fwd %+v rev %+v", res, err, ct.Fwd, ct.Rev)
	}
}

// A round that would find nothing (empty ring, nothing to read again) is
// skipped: no epoch bump, no statistics read; a packet after it is read by
// the next round, and a full round runs at least every fullRoundEvery.
func TestQuietRoundsAreSkipped(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenUDP(5300); err != nil {
		t.Fatal(err)
	}
	round := func() map[flow.Tuple]bool {
		t.Helper()
		got := map[flow.Tuple]bool{}
		if err := e.c.ReadChanged(func(v flow.Tuple, fin bool) { got[v] = fin }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	// The pods may send a packet of their own now and then (neighbour
	// discovery): wait for a round that is skipped.
	skipped := false
	for i := 0; i < 50 && !skipped; i++ {
		epoch, quiet := e.c.epoch, counterValue(e.c.metrics.quietRounds)
		round()
		skipped = e.c.epoch == epoch && counterValue(e.c.metrics.quietRounds) == quiet+1
		time.Sleep(10 * time.Millisecond)
	}
	if !skipped {
		t.Fatal("no round was skipped in 50 rounds without traffic")
	}
	tr, err := netnstest.SendUDP(e.client, e.server.Addr(5300), 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	epoch := e.c.epoch
	got := round()
	want := flow.NewTuple(tr.Local.Addr(), e.server.IPv4, tr.Local.Port(), 5300, flow.ProtoUDP)
	if _, ok := got[want]; !ok || e.c.epoch == epoch {
		t.Errorf("the round after traffic: epoch %d -> %d, views %v; want a full round reporting %s", epoch, e.c.epoch, got, want)
	}
	// Quiet again, but a full round is due.
	for len(e.c.reread) > 0 {
		round()
	}
	e.c.fullRoundAt = time.Now().Add(-fullRoundEvery)
	epoch = e.c.epoch
	round()
	if e.c.epoch == epoch {
		t.Errorf("no full round after %s of quiet ones", fullRoundEvery)
	}
}
