//go:build integration

package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/ipindex"
	"github.com/flowlens/flowlens/pkg/mirror"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/kubeapi"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The agent, as the ServiceAccount of build/rbac/agent.yaml against a real
// kube-apiserver, mirrors an opted-in pod of its node (a real netns pod)
// to the capture veth: both directions, each packet exactly once, and
// nothing of a pod that did not opt in; an annotation removed live stops
// it; shutdown leaves nothing; a restart after a crash converges to one
// mirror per hook (no duplicate copies).
func TestAgentMirrorsOptedInPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newMirrorEnv(t, ctx)

	t.Run("opt-in mirrors both directions once, opt-out stops, shutdown cleans", func(t *testing.T) {
		a := e.startAgent(t, ctx, agentconfig.MirrorAuto)
		e.annotatePod(t, ctx, "shop", "server", "ingress") // any value: both directions
		a.waitInterfaces(t, 1)
		e.checkMirroredOnce(t, true)

		e.annotatePod(t, ctx, "shop", "server", "")
		a.waitInterfaces(t, 0)
		e.checkMirroredOnce(t, false)

		// The namespace's annotation covers the client and the server.
		e.annotateNamespace(t, ctx, "shop", "egress")
		a.waitInterfaces(t, 2)
		e.annotateNamespace(t, ctx, "shop", "")
		a.waitInterfaces(t, 0)

		e.annotatePod(t, ctx, "shop", "server", "both")
		a.waitInterfaces(t, 1)
		a.stop(t)
		e.checkNothingLeft(t)
	})

	for _, mech := range []string{agentconfig.MirrorTC, agentconfig.MirrorAuto} {
		t.Run("restart after a crash converges with "+mech, func(t *testing.T) {
			// What a killed agent leaves: tc filters of ours on the
			// server's interface and the capture veth (a mirror never
			// closed; TCX links would die with the process).
			crashed, err := mirror.New(mirror.Config{NetnsPath: e.node.NetnsPath, Mechanism: mirror.MechanismTC}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := crashed.Reconcile([]netip.Addr{e.server.IPv4}); err != nil {
				t.Fatal(err)
			}
			e.annotatePod(t, ctx, "shop", "server", "both")
			a := e.startAgent(t, ctx, mech)
			a.waitInterfaces(t, 1)
			tc, tcx := e.ourArtifacts(t, e.server.HostVeth)
			want := [2]int{1, 1}
			if (mech == agentconfig.MirrorTC && (tc != want || tcx != [2]int{})) ||
				(mech != agentconfig.MirrorTC && (tcx != want || tc != [2]int{})) {
				t.Errorf("%s after restart: our tc filters (ingress, egress) %v, TCX programs %v; want one mirror per hook", mech, tc, tcx)
			}
			e.checkMirroredOnce(t, true)
			a.stop(t)
			e.checkNothingLeft(t)
		})
	}
}

type mirrorEnv struct {
	node                  *netnstest.Node
	client, server, other *netnstest.Pod
	srv, otherSrv         netip.AddrPort
	admin                 kubernetes.Interface
	saKubeconfig, collect string
}

func newMirrorEnv(t *testing.T, ctx context.Context) *mirrorEnv {
	t.Helper()
	c, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		// A missing binary fails the test: CI must have run hack/install-deps.sh.
		t.Fatalf("start etcd + kube-apiserver: %v", err)
	}
	t.Cleanup(c.Stop)
	_, file, _, _ := runtime.Caller(0)
	if err := c.Apply(ctx, filepath.Join(filepath.Dir(file), "..", "..", "build", "rbac", "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	e := &mirrorEnv{}
	if e.saKubeconfig, err = c.ServiceAccountKubeconfig(ctx, "flowlens", "flowlens-agent"); err != nil {
		t.Fatal(err)
	}
	if e.admin, err = c.AdminClient(); err != nil {
		t.Fatal(err)
	}
	e.node = netnstest.NewNodeT(t, netnstest.Config{Name: "mirag", Pods: []netnstest.PodSpec{
		{Name: "client", Namespace: "shop"}, {Name: "server", Namespace: "shop"}, {Name: "other", Namespace: "misc"},
	}})
	e.client, e.server, e.other = e.node.Pod("client"), e.node.Pod("server"), e.node.Pod("other")
	for _, p := range []*netnstest.Pod{e.server, e.other} {
		s, err := p.ListenTCP(8080)
		if err != nil {
			t.Fatal(err)
		}
		if p == e.server {
			e.srv = s.Addr()
		} else {
			e.otherSrv = s.Addr()
		}
	}
	for _, ns := range []string{"shop", "misc"} {
		if err := kubeapi.EnsureNamespace(ctx, e.admin, ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range e.node.Pods() {
		if _, err := kubeapi.CreateRunningPod(ctx, e.admin, kubeapi.RunningPod{
			Namespace: p.Namespace, Name: p.Name, Node: "node-a", IPs: []string{p.IPv4.String()}}); err != nil {
			t.Fatal(err)
		}
	}
	// An opted-in pod of another node: nothing to mirror here.
	if _, err := kubeapi.CreateRunningPod(ctx, e.admin, kubeapi.RunningPod{
		Namespace: "misc", Name: "remote", Node: "node-b", IPs: []string{"10.244.200.2"},
		Annotations: map[string]string{ipindex.L7Annotation: "both"}}); err != nil {
		t.Fatal(err)
	}
	// A collector that takes the records and drops them.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	e.collect = ln.Addr().String()
	return e
}

func (e *mirrorEnv) annotatePod(t *testing.T, ctx context.Context, ns, name, v string) {
	t.Helper()
	p, err := e.admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setAnnotation(&p.ObjectMeta, v)
	if _, err := e.admin.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *mirrorEnv) annotateNamespace(t *testing.T, ctx context.Context, name, v string) {
	t.Helper()
	n, err := e.admin.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setAnnotation(&n.ObjectMeta, v)
	if _, err := e.admin.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func setAnnotation(m *metav1.ObjectMeta, v string) {
	if v == "" {
		delete(m.Annotations, ipindex.L7Annotation)
		return
	}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[ipindex.L7Annotation] = v
}

type runningAgent struct {
	reg  *prometheus.Registry
	stop func(t *testing.T)
}

// startAgent runs the agent with its default mirror (on: L7 and
// Kubernetes are), mechanism mech, in the node's namespace.
func (e *mirrorEnv) startAgent(t *testing.T, ctx context.Context, mech string) *runningAgent {
	t.Helper()
	cfg := agentconfig.Default()
	cfg.NodeName = "node-a"
	cfg.Conntrack.NetNS = e.node.NetnsPath
	cfg.Counters.Source = agentconfig.CountersConntrack
	cfg.Kubernetes.Enabled, cfg.Kubernetes.Kubeconfig, cfg.Kubernetes.OwnNodeOnly = true, e.saKubeconfig, true
	cfg.Export.Collector = e.collect
	cfg.Server.Listen = "127.0.0.1:0"
	// A unix socket path has at most 108 bytes: t.TempDir's are longer.
	dir, err := os.MkdirTemp("", "flmirror")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.L7.EVE.Source, cfg.L7.EVE.Path = "unix_stream", filepath.Join(dir, "eve.sock")
	cfg.Mirror.Mechanism = mech
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	if !*cfg.Mirror.Enabled {
		t.Fatal("mirror.enabled defaulted to false with L7 and Kubernetes on")
	}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	var once sync.Once
	stop := func(t *testing.T) {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent stopped with: %v", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("agent did not stop within a minute")
			}
		})
	}
	t.Cleanup(func() { stop(t) })
	return &runningAgent{reg: reg, stop: stop}
}

func (a *runningAgent) gauge(name string) (float64, bool) {
	mfs, err := a.reg.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue(), true
			}
		}
	}
	return 0, false
}

// waitInterfaces waits for n mirrored interfaces, for less than the
// default mirror.reconcileInterval (10s): a change must take effect
// through the change notification, not the timer.
func (a *runningAgent) waitInterfaces(t *testing.T, n int) {
	t.Helper()
	const within = 5 * time.Second
	began := time.Now()
	for time.Since(began) < within {
		if v, ok := a.gauge("flowlens_mirror_interfaces"); ok && v == float64(n) {
			if w, _ := a.gauge("flowlens_agent_mirror_wanted_addresses"); w == float64(n) {
				t.Logf("%d mirrored interface(s) after %s", n, time.Since(began).Round(time.Millisecond))
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	v, _ := a.gauge("flowlens_mirror_interfaces")
	t.Fatalf("flowlens_mirror_interfaces %v, want %d within %s", v, n, within)
}

// checkMirroredOnce moves data both ways between the client and the server
// and between the client and the other pod, capturing on the capture peer
// (what Suricata reads) and on the server's host veth. With want, every
// packet of the server's connection the veth saw arrives on the peer
// exactly once, each direction; without, none does. The other pod's
// connection never does.
func (e *mirrorEnv) checkMirroredOnce(t *testing.T, want bool) {
	t.Helper()
	peer := startCapture(t, e.node.NetnsPath, "flc1")
	veth := startCapture(t, e.node.NetnsPath, e.server.HostVeth)
	const sent, reply = 4 << 20, 1 << 20
	tr, err := netnstest.SendExactly(e.client, e.srv, sent, reply)
	if err != nil {
		t.Fatal(err)
	}
	trOther, err := netnstest.SendExactly(e.client, e.otherSrv, sent, reply)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // last ACKs and FINs
	got, orig := peer.take(t), veth.take(t)
	fwd := dirKey{tr.Local, e.srv}
	rev := dirKey{e.srv, tr.Local}
	if orig[fwd].bytes < sent || orig[rev].bytes < reply {
		t.Fatalf("the server's veth saw %+v / %+v, less than the payload %d / %d: capture broken", orig[fwd], orig[rev], sent, reply)
	}
	for _, k := range []dirKey{fwd, rev} {
		if want && got[k] != orig[k] {
			t.Errorf("%v -> %v: capture peer got %+v, the pod's interface carried %+v; want each packet exactly once", k.src, k.dst, got[k], orig[k])
		}
		if !want && got[k] != (counts{}) {
			t.Errorf("%v -> %v: capture peer got %+v after the opt-out, want nothing", k.src, k.dst, got[k])
		}
	}
	for k, c := range got {
		if k.src.Addr() == e.other.IPv4 || k.dst.Addr() == e.other.IPv4 {
			t.Errorf("the other pod's traffic %v -> %v was mirrored (%+v); it did not opt in (connection from %v)", k.src, k.dst, c, trOther.Local)
		}
	}
}

// checkNothingLeft: no capture veth, no filter, clsact or TCX program of
// ours on any pod interface.
func (e *mirrorEnv) checkNothingLeft(t *testing.T) {
	t.Helper()
	out, err := e.node.Exec("ip", "-o", "link", "show")
	if err != nil {
		t.Fatalf("ip link: %v %s", err, out)
	}
	if strings.Contains(string(out), "flc0") || strings.Contains(string(out), "flc1") {
		t.Errorf("capture veth left after shutdown:\n%s", out)
	}
	for _, p := range e.node.Pods() {
		tc, tcx := e.ourArtifacts(t, p.HostVeth)
		if tc != [2]int{} || tcx != [2]int{} {
			t.Errorf("%s after shutdown: our tc filters %v, TCX programs %v", p.HostVeth, tc, tcx)
		}
		q, _ := e.node.Exec("tc", "qdisc", "show", "dev", p.HostVeth)
		if strings.Contains(string(q), "clsact") {
			t.Errorf("%s after shutdown: clsact left: %s", p.HostVeth, q)
		}
	}
}

// ourArtifacts counts our u32 filters (by priority and class id, per hook)
// and TCX programs named fl_mirror on dev.
func (e *mirrorEnv) ourArtifacts(t *testing.T, dev string) (tc, tcx [2]int) {
	t.Helper()
	for i, hook := range []string{"ingress", "egress"} {
		out, err := e.node.Exec("tc", "filter", "show", "dev", dev, hook)
		if err != nil && !strings.Contains(string(out), "Cannot find") && !strings.Contains(string(out), "Invalid") {
			t.Fatalf("tc filter show dev %s %s: %v %s", dev, hook, err, out)
		}
		prio := fmt.Sprintf("pref %d ", mirror.TCPriority+i)
		flowid := fmt.Sprintf("flowid %x:%x", mirror.Marker>>16, mirror.Marker&0xffff)
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, prio) && strings.Contains(line, flowid) {
				tc[i]++
			}
		}
	}
	err := netns.Do(e.node.NetnsPath, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		for i, typ := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: typ})
			if err != nil {
				return fmt.Errorf("query %v: %w", typ, err)
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
				if info.Name == mirror.ProgramName {
					tcx[i]++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("TCX programs of %s: %v", dev, err)
	}
	return tc, tcx
}

// dirKey is one direction of a TCP connection.
type dirKey struct{ src, dst netip.AddrPort }

type counts struct{ packets, bytes uint64 }

// capture sums IPv4 TCP packets and their IP lengths per direction seen
// on one interface through a raw AF_PACKET socket (Suricata's af-packet).
// A GSO packet is one packet of its full length, on the veth and on the
// capture peer alike, so the two compare exactly.
type capture struct {
	fd      int
	done    chan struct{}
	closeFn func()
	mu      sync.Mutex
	flows   map[dirKey]counts
	err     error
	drops   uint32
}

func startCapture(t *testing.T, nsPath, ifname string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{}), flows: map[dirKey]counts{}, fd: -1}
	proto := int(uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8)
	err := netns.Do(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	stop := make(chan struct{})
	go func() {
		defer close(c.done)
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
				return
			}
			c.add(buf[:n])
		}
	}()
	var once sync.Once
	closeIt := func() {
		once.Do(func() {
			close(stop)
			<-c.done
			if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				c.drops = st.Drops
			}
			unix.Close(c.fd)
		})
	}
	t.Cleanup(closeIt)
	c.closeFn = closeIt
	return c
}

func (c *capture) add(f []byte) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+4 {
		return
	}
	k := dirKey{
		netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(ip[ihl:])),
		netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(ip[ihl+2:])),
	}
	c.mu.Lock()
	v := c.flows[k]
	v.packets++
	v.bytes += uint64(binary.BigEndian.Uint16(ip[2:]))
	c.flows[k] = v
	c.mu.Unlock()
}

// take stops the capture and returns what it saw; a socket error or a
// drop fails the test (a lost packet would look like a missing copy).
func (c *capture) take(t *testing.T) map[dirKey]counts {
	t.Helper()
	c.closeFn()
	if c.err != nil {
		t.Fatalf("capture: %v", c.err)
	}
	if c.drops != 0 {
		t.Fatalf("capture dropped %d packets: the comparison would be meaningless", c.drops)
	}
	return c.flows
}
