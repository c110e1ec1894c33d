//go:build integration

package mirror

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewScanRetryKeepsLiveMirrors: the first Reconcile's scan for a
// previous run's leftovers can fail (here: the interface dump is
// interrupted by interfaces coming and going, as on a busy node when the
// agent starts; netlink reports NLM_F_DUMP_INTR) while the same Reconcile
// installs the wanted mirrors. The next Reconcile scans again; the scan
// must not take the mirrors this instance installed for a previous run's
// leftovers and delete them, while m.ifs (and flowlens_mirror_interfaces)
// keep saying they are mirrored.
func TestReviewScanRetryKeepsLiveMirrors(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "rvscan", Pods: []netnstest.PodSpec{{Name: "a"}}})
	a := node.Pod("a")
	ns, err := vnetns.GetFromPath(node.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Enough interfaces that a dump takes several netlink messages.
	// (veth pairs: this kernel has no dummy interfaces)
	for i := 0; i < 150; i++ {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("rvd%d", i)}, PeerName: fmt.Sprintf("rvp%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Churn: interfaces created and deleted, as pods start and stop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("rvc%d", i%4)}, PeerName: fmt.Sprintf("rvq%d", i%4)}
			_ = h.LinkAdd(d)
			_ = h.LinkDel(d)
		}
	}()
	stopChurn := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopChurn()

	want := []netip.Addr{a.IPv4}
	var m *Mirror
	for attempt := 0; attempt < 200 && m == nil; attempt++ {
		mi, err := New(Config{NetnsPath: node.NetnsPath, Mechanism: MechanismTC}, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		err = mi.Reconcile(want)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			m = mi // the scan failed; a's mirror was installed regardless
			break
		}
		if err := mi.Close(); err != nil {
			t.Fatal(err)
		}
	}
	stopChurn()
	if m == nil {
		t.Fatal("could not get an interrupted interface dump in 200 attempts (test set-up)")
	}
	t.Cleanup(func() { _ = m.Close() })
	e := &env{node: node, h: h}
	tc, _, _ := e.ourArtifacts(t, a.HostVeth)
	if tc != [2]int{1, 1} {
		t.Fatalf("after the Reconcile whose scan failed: our tc filters %v on %s, want [1 1]", tc, a.HostVeth)
	}
	// The next periodic Reconcile (the scan now succeeds).
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := m.Reconcile(want)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Reconcile keeps failing: %v", err)
		}
	}
	// And one more, as the timer would do.
	if err := m.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	tc, _, _ = e.ourArtifacts(t, a.HostVeth)
	if got := value(m.metrics.mirrored); tc != [2]int{1, 1} {
		t.Errorf("after the retried scan: our tc filters on %s %v, want [1 1]; flowlens_mirror_interfaces says %v (a's traffic no longer reaches Suricata, for good)", a.HostVeth, tc, got)
	}
}
