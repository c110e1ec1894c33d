//go:build integration

package mirror

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/netnstest"
)

const (
	bridgedIP  = "192.168.77.2"
	bridgeName = "flbr0"
	bridgedDev = "vethbr0"
	foreignPri = 30000
	serverPort = 8080
)

// env is a node with three routed pods (a, c, d; Calico-style /32 routes)
// and one bridged pod (b, its host veth a port of a Linux bridge, as the
// bridge plugin and Flannel wire it).
type env struct {
	node       *netnstest.Node
	a, c, d, b *netnstest.Pod
	h          *netlink.Handle
}

func newEnv(t *testing.T) *env {
	t.Helper()
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "mir", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "c"}, {Name: "d"}}})
	e := &env{node: node, a: node.Pod("a"), c: node.Pod("c"), d: node.Pod("d")}
	podNs := node.NetnsName + "-b"
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", podNs)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", podNs).Run() })
	n := node.NetnsName
	sh("ip", "-n", n, "link", "add", bridgeName, "type", "bridge")
	sh("ip", "-n", n, "addr", "add", "192.168.77.1/24", "dev", bridgeName)
	sh("ip", "-n", n, "link", "set", bridgeName, "up")
	sh("ip", "-n", n, "link", "add", bridgedDev, "type", "veth", "peer", "name", "eth0", "netns", podNs)
	sh("ip", "-n", n, "link", "set", bridgedDev, "master", bridgeName, "up")
	sh("ip", "-n", podNs, "addr", "add", bridgedIP+"/24", "dev", "eth0")
	sh("ip", "-n", podNs, "link", "set", "eth0", "up")
	sh("ip", "-n", podNs, "link", "set", "lo", "up")
	sh("ip", "-n", podNs, "route", "add", "default", "via", "192.168.77.1")
	e.b = &netnstest.Pod{Name: "b", Namespace: "default", NetnsName: podNs, NetnsPath: netnstest.NetnsDir + "/" + podNs,
		IPv4: netip.MustParseAddr(bridgedIP), HostVeth: bridgedDev}
	for _, p := range []*netnstest.Pod{e.a, e.c, e.d} {
		if _, err := p.ListenTCP(serverPort); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := vnetns.GetFromPath(node.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	e.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.h.Close)
	return e
}

func (e *env) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := e.h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return l
}

// foreign is somebody else's counting program on a pod's interface, as a
// cls_bpf filter after ours in priority order (counter 0) and as a TCX
// program after ours (counter 1); both say "next".
type foreign struct {
	dev      string
	counters *ebpf.Map
	tcxLink  link.Link
	tcxProg  ebpf.ProgramID
}

func countingProgram(t *testing.T, counters *ebpf.Map, key int32) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, int64(key), asm.Word),
			asm.LoadMapPtr(asm.R1, counters.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load foreign program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func (e *env) addForeign(t *testing.T, dev string) *foreign {
	t.Helper()
	counters, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { counters.Close() })
	f := &foreign{dev: dev, counters: counters}
	if out, err := e.node.Exec("tc", "qdisc", "add", "dev", dev, "clsact"); err != nil {
		t.Fatalf("add clsact: %v %s", err, out)
	}
	l := e.link(t, dev)
	err = e.h.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: foreignPri, Protocol: unix.ETH_P_ALL},
		Fd:          countingProgram(t, counters, 0).FD(), Name: "foreign", DirectAction: true,
	})
	if err != nil {
		t.Fatalf("add foreign filter: %v", err)
	}
	prog := countingProgram(t, counters, 1)
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	f.tcxProg, _ = info.ID()
	err = netns.Do(e.node.NetnsPath, func() error {
		var err error
		f.tcxLink, err = link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		t.Fatalf("attach foreign tcx program: %v", err)
	}
	t.Cleanup(func() { f.tcxLink.Close() })
	return f
}

// packets returns what the foreign cls_bpf filter and TCX program counted.
func (f *foreign) packets(t *testing.T) (tc, tcx uint64) {
	t.Helper()
	if err := f.counters.Lookup(int32(0), &tc); err != nil {
		t.Fatal(err)
	}
	if err := f.counters.Lookup(int32(1), &tcx); err != nil {
		t.Fatal(err)
	}
	return tc, tcx
}

// present says whether both foreign attachments are still in place.
func (f *foreign) present(t *testing.T, e *env) bool {
	t.Helper()
	l := e.link(t, f.dev)
	fs, err := e.h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	filter := false
	for _, x := range fs {
		if b, ok := x.(*netlink.BpfFilter); ok && b.Priority == foreignPri {
			filter = true
		}
	}
	prog := false
	err = netns.Do(e.node.NetnsPath, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			prog = prog || p.ID == f.tcxProg
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return filter && prog
}

// ourArtifacts counts, on one interface, our u32 filters and our TCX
// programs per hook (ingress, egress), and says whether it has a clsact.
func (e *env) ourArtifacts(t *testing.T, dev string) (tc, tcx [2]int, clsact bool) {
	t.Helper()
	l := e.link(t, dev)
	qds, err := e.h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qds {
		clsact = clsact || q.Type() == "clsact"
	}
	for i, parent := range hooks {
		if !clsact {
			break
		}
		fs, err := e.h.FilterList(l, parent)
		if err != nil {
			t.Fatalf("list filters of %s: %v", dev, err)
		}
		for _, f := range fs {
			if ok, _ := ours(f, i); ok {
				tc[i]++
			}
		}
	}
	err = netns.Do(e.node.NetnsPath, func() error {
		for i, typ := range tcxHooks {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: typ})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				prog, err := ebpf.NewProgramFromID(p.ID)
				if err != nil {
					return err
				}
				info, err := prog.Info()
				prog.Close()
				if err != nil {
					return err
				}
				if info.Name == ProgramName {
					tcx[i]++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx programs of %s: %v", dev, err)
	}
	return tc, tcx, clsact
}

// expectMirrored checks that dev carries exactly one mirror of ours per
// hook with the given mechanism (or none when n is 0).
func (e *env) expectMirrored(t *testing.T, dev, mech string, n int) {
	t.Helper()
	tc, tcx, _ := e.ourArtifacts(t, dev)
	want := [2]int{n, n}
	switch mech {
	case MechanismTC:
		if tc != want || tcx != [2]int{} {
			t.Errorf("%s: our tc filters %v, tcx programs %v; want tc %v and no tcx", dev, tc, tcx, want)
		}
	default:
		if tcx != want || tc != [2]int{} {
			t.Errorf("%s: our tcx programs %v, tc filters %v; want tcx %v and no tc", dev, tcx, tc, want)
		}
	}
}

// value reads a gauge or counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

var ctCounters = regexp.MustCompile(`packets=(\d+) bytes=(\d+)`)

// conntrack returns the node's counters of the connection of tr: the
// original (client to server) and reply directions.
func (e *env) conntrack(t *testing.T, tr netnstest.Transfer) (orig, reply counts) {
	t.Helper()
	out, err := e.node.Conntrack("-L", "-p", "tcp", "--src", tr.Local.Addr().String(), "--sport", strconv.Itoa(int(tr.Local.Port())))
	if err != nil {
		t.Fatalf("conntrack: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 {
		t.Fatalf("conntrack entries of %s: %q", tr.Local, out)
	}
	m := ctCounters.FindAllStringSubmatch(lines[0], -1)
	if len(m) != 2 {
		t.Fatalf("conntrack entry without counters (acct off?): %q", lines[0])
	}
	parse := func(s []string) counts {
		p, _ := strconv.ParseUint(s[1], 10, 64)
		b, _ := strconv.ParseUint(s[2], 10, 64)
		return counts{p, b}
	}
	return parse(m[0]), parse(m[1])
}

func send(t *testing.T, from *netnstest.Pod, to netip.Addr, n, reply int64) netnstest.Transfer {
	t.Helper()
	tr, err := netnstest.SendExactly(from, netip.AddrPortFrom(to, serverPort), n, reply)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// flowCheck is one transfer and how many of its two ends are mirrored.
type flowCheck struct {
	name   string
	tr     netnstest.Transfer
	copies uint64
}

// checkCapture compares the capture with the node's conntrack counters:
// each direction of each connection must have been captured exactly
// copies times, in packets and in IP bytes (both count one GSO packet as
// one packet of its full length). Nothing else of TCP may be captured.
func (e *env) checkCapture(t *testing.T, got map[dirKey]counts, checks []flowCheck) {
	t.Helper()
	seen := map[dirKey]bool{}
	for _, c := range checks {
		orig, reply := e.conntrack(t, c.tr)
		server := netip.AddrPortFrom(c.tr.Remote.Addr(), serverPort)
		for _, d := range []struct {
			k  dirKey
			ct counts
		}{{dirKey{c.tr.Local, server}, orig}, {dirKey{server, c.tr.Local}, reply}} {
			seen[d.k] = true
			want := counts{d.ct.packets * c.copies, d.ct.bytes * c.copies}
			if got[d.k] != want {
				t.Errorf("%s %s->%s: captured %d packets / %d bytes, want %d x conntrack's %d / %d",
					c.name, d.k.src, d.k.dst, got[d.k].packets, got[d.k].bytes, c.copies, d.ct.packets, d.ct.bytes)
			}
		}
	}
	for k, v := range got {
		if !seen[k] && k.src.Port() != 0 {
			t.Errorf("captured %d packets of %s->%s, which no mirrored pod exchanged", v.packets, k.src, k.dst)
		}
	}
}

// settle lets the last ACKs of closed connections pass before counting.
func settle() { time.Sleep(300 * time.Millisecond) }

// reconcileUntil reconciles until n interfaces are mirrored (a bridged
// pod's neighbour entry appears after the probe Reconcile sends).
func reconcileUntil(t *testing.T, m *Mirror, want []netip.Addr, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := m.Reconcile(want); err != nil {
			t.Fatalf("Reconcile: %v", err)
		}
		if int(value(m.metrics.mirrored)) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d interfaces mirrored after 5 s, want %d (unresolved %v)", int(value(m.metrics.mirrored)), n, value(m.metrics.missing))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMirrorTC(t *testing.T)   { testMirror(t, MechanismTC) }
func TestMirrorTCX(t *testing.T)  { testMirror(t, MechanismTCX) }
func TestMirrorAuto(t *testing.T) { testMirror(t, MechanismAuto) }

// testMirror runs the whole life of a mirror with one mechanism: opt-in of
// a routed and a bridged pod, exact capture of both directions and nothing
// of unmirrored pods, opt-out, pod deletion, a restart over existing state
// with a stale entry, and a clean shutdown, next to a foreign tc filter.
func testMirror(t *testing.T, mech string) {
	e := newEnv(t)
	fr := e.addForeign(t, e.a.HostVeth)
	m, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: mech}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	wantMech := mech
	if mech == MechanismAuto {
		wantMech = MechanismTCX // this kernel has TCX
	}
	for _, name := range []string{"flc0", "flc1"} {
		l := e.link(t, name)
		if l.Attrs().MTU != captureMTU || l.Attrs().Flags&unix.IFF_UP == 0 || l.Attrs().Alias != CaptureAlias {
			t.Errorf("%s: MTU %d, flags %v, alias %q; want MTU %d, up, alias %q", name, l.Attrs().MTU, l.Attrs().Flags, l.Attrs().Alias, captureMTU, CaptureAlias)
		}
	}
	sn := startSniffer(t, e.node.NetnsPath, "flc1")

	// Opt-in of a and b. The node never talked to b: the first round
	// cannot find its bridge port, says so, and probes its neighbour.
	ab := []netip.Addr{e.a.IPv4, e.b.IPv4}
	if err := m.Reconcile(ab); err != nil {
		t.Fatal(err)
	}
	if got := value(m.metrics.unresolved); got != 1 {
		t.Errorf("unresolved_total after the first round = %v, want 1 (the silent bridged pod)", got)
	}
	reconcileUntil(t, m, ab, 2)
	if got := value(m.metrics.missing); got != 0 {
		t.Errorf("unresolved_pods = %v after b was found, want 0", got)
	}
	if got := m.Mechanism(); got != wantMech {
		t.Errorf("mechanism %q, want %q", got, wantMech)
	}
	e.expectMirrored(t, e.a.HostVeth, wantMech, 1)
	e.expectMirrored(t, bridgedDev, wantMech, 1)
	e.expectMirrored(t, e.c.HostVeth, wantMech, 0)
	e.expectMirrored(t, e.d.HostVeth, wantMech, 0)
	sn.take(t) // ARP and the like of the set-up

	tc0, tcx0 := fr.packets(t)
	checks := []flowCheck{
		{"a->c (a mirrored)", send(t, e.a, e.c.IPv4, 3_000_000, 1_000_000), 1},
		{"b->c (b mirrored, bridged)", send(t, e.b, e.c.IPv4, 1_000_000, 3_000_000), 1},
		{"b->a (both mirrored)", send(t, e.b, e.a.IPv4, 500_000, 500_000), 2},
		{"c->d (neither)", send(t, e.c, e.d.IPv4, 2_000_000, 2_000_000), 0},
	}
	settle()
	e.checkCapture(t, sn.take(t), checks)
	// Both directions of a->c and b->a cross a's ingress: at least the
	// packets a sent. Fewer means our mirror ended the hook for others.
	aSent, _ := e.conntrack(t, checks[0].tr)
	if tc1, tcx1 := fr.packets(t); tc1-tc0 < aSent.packets || tcx1-tcx0 < aSent.packets {
		t.Errorf("foreign tc filter / tcx program after ours counted %d / %d packets, want at least %d each: our mirror ended the hook",
			tc1-tc0, tcx1-tcx0, aSent.packets)
	}

	// Opt-out of b: its mirror goes, a's stays, even while another wanted
	// address (no such pod) cannot be resolved.
	if err := m.Reconcile([]netip.Addr{e.a.IPv4, netip.MustParseAddr("10.244.0.250")}); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, bridgedDev, wantMech, 0)
	e.expectMirrored(t, e.a.HostVeth, wantMech, 1)
	if _, _, clsact := e.ourArtifacts(t, bridgedDev); clsact {
		t.Errorf("%s keeps a clsact qdisc after its mirror was removed", bridgedDev)
	}
	checks = []flowCheck{
		{"a->c", send(t, e.a, e.c.IPv4, 1_000_000, 1_000_000), 1},
		{"b->c (b opted out)", send(t, e.b, e.c.IPv4, 1_000_000, 1_000_000), 0},
	}
	settle()
	e.checkCapture(t, sn.take(t), checks)

	// Pod deletion: d is mirrored, then its interface disappears.
	if err := m.Reconcile([]netip.Addr{e.a.IPv4, e.d.IPv4}); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, e.d.HostVeth, wantMech, 1)
	if err := e.h.LinkDel(e.link(t, e.d.HostVeth)); err != nil {
		t.Fatal(err)
	}
	if err := m.Reconcile([]netip.Addr{e.a.IPv4, e.d.IPv4}); err != nil {
		t.Fatalf("Reconcile after the pod's interface went: %v", err)
	}
	if got := value(m.metrics.mirrored); got != 1 {
		t.Errorf("%v interfaces mirrored after d's went, want 1", got)
	}
	if got := value(m.metrics.missing); got != 1 {
		t.Errorf("unresolved_pods = %v with d gone, want 1", got)
	}

	// Restart: m mirrors a and c; a second instance (a restarted agent, m
	// left as it is) wants a and b: c's mirror is stale.
	ac := []netip.Addr{e.a.IPv4, e.c.IPv4}
	if err := m.Reconcile(ac); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, e.c.HostVeth, wantMech, 1)
	m2, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: mech}, nil)
	if err != nil {
		t.Fatalf("second instance over existing state: %v", err)
	}
	t.Cleanup(func() { _ = m2.Close() })
	reconcileUntil(t, m2, ab, 2)
	e.expectMirrored(t, e.a.HostVeth, wantMech, 1)
	e.expectMirrored(t, bridgedDev, wantMech, 1)
	e.expectMirrored(t, e.c.HostVeth, wantMech, 0)
	wantStale := 2.0 // c's two tc filters; a's are adopted
	if wantMech == MechanismTCX {
		wantStale = 4 // TCX links are not adopted: a's and c's, both hooks
	}
	if got := value(m2.metrics.staleRemoved); got != wantStale {
		t.Errorf("stale_removed_total = %v, want %v", got, wantStale)
	}
	sn.take(t)
	checks = []flowCheck{
		{"a->c after restart", send(t, e.a, e.c.IPv4, 2_000_000, 500_000), 1},
		{"b->a after restart", send(t, e.b, e.a.IPv4, 500_000, 2_000_000), 2},
	}
	settle()
	e.checkCapture(t, sn.take(t), checks)
	sn.close()

	// Clean shutdown: nothing of ours anywhere; the foreign filter stays.
	if err := m2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close of the first instance after the second: %v", err)
	}
	links, err := e.h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		if strings.HasPrefix(name, "flc") {
			t.Errorf("capture interface %s left after Close", name)
			continue
		}
		tc, tcx, clsact := e.ourArtifacts(t, name)
		if tc != [2]int{} || tcx != [2]int{} {
			t.Errorf("%s: tc filters %v, tcx programs %v of ours left after Close", name, tc, tcx)
		}
		if clsact && name != e.a.HostVeth {
			t.Errorf("%s: clsact qdisc left after Close (only a's, which holds the foreign filter, predates us)", name)
		}
	}
	if !fr.present(t, e) {
		t.Error("the foreign tc filter or TCX program did not survive")
	}
}

// TestAutoFallsBackToTC: where TCX attach is not supported, auto mirrors
// with tc for every interface.
func TestAutoFallsBackToTC(t *testing.T) {
	e := newEnv(t)
	m, err := New(Config{NetnsPath: e.node.NetnsPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	// The kernel here has TCX; make its attach fail as an old kernel's does.
	m.attachTCX = func(int, ebpf.AttachType) (link.Link, error) {
		return nil, fmt.Errorf("attach tcx: %w", ebpf.ErrNotSupported)
	}
	sn := startSniffer(t, e.node.NetnsPath, "flc1")
	if err := m.Reconcile([]netip.Addr{e.a.IPv4, e.c.IPv4}); err != nil {
		t.Fatal(err)
	}
	if got := m.Mechanism(); got != MechanismTC {
		t.Fatalf("mechanism %q after TCX failed, want tc", got)
	}
	e.expectMirrored(t, e.a.HostVeth, MechanismTC, 1)
	e.expectMirrored(t, e.c.HostVeth, MechanismTC, 1)
	sn.take(t)
	checks := []flowCheck{{"a->c", send(t, e.a, e.c.IPv4, 1_000_000, 1_000_000), 2}}
	settle()
	e.checkCapture(t, sn.take(t), checks)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	e.expectMirrored(t, e.a.HostVeth, MechanismTC, 0)
}

// TestNotAPodInterface: an address that is not a local pod's (the node's
// own, on lo) is refused and counted, never mirrored.
func TestNotAPodInterface(t *testing.T) {
	e := newEnv(t)
	m, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: MechanismTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if err := m.Reconcile([]netip.Addr{netip.MustParseAddr("169.254.1.1"), netip.MustParseAddr("192.168.77.1")}); err != nil {
		t.Fatal(err)
	}
	if got := value(m.metrics.mirrored); got != 0 {
		t.Errorf("%v interfaces mirrored for non-pod addresses", got)
	}
	if got := value(m.metrics.unresolved); got != 2 {
		t.Errorf("unresolved_total = %v, want 2", got)
	}
	for _, dev := range []string{"lo", bridgeName} {
		if tc, _, _ := e.ourArtifacts(t, dev); tc != [2]int{} {
			t.Errorf("%s got our filters %v", dev, tc)
		}
	}
}

// TestForeignCaptureNameRefused: an interface called flc0 that is not ours
// is left alone and New fails naming it.
func TestForeignCaptureNameRefused(t *testing.T) {
	e := newEnv(t)
	if out, err := e.node.Exec("ip", "link", "add", "flc0", "type", "veth", "peer", "name", "flc1"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, err := New(Config{NetnsPath: e.node.NetnsPath}, nil)
	if err == nil || !strings.Contains(err.Error(), "flc0") {
		t.Fatalf("New over a foreign flc0: %v, want an error naming it", err)
	}
	e.link(t, "flc0") // still there
}
