//go:build integration

package podlinks

import (
	"context"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/test/netnstest"
)

// TestWatchRoutedPods: pods present at start and added later are reported,
// a deleted host veth is reported gone, and the node's other links are not.
func TestWatchRoutedPods(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "plw", Pods: []netnstest.PodSpec{{Name: "a"}}})
	var mu sync.Mutex
	up := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, node.NetnsPath, []string{"flc"}, func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			if ev.NetnsPath != node.NetnsPath {
				t.Errorf("event netns %q, want %q", ev.NetnsPath, node.NetnsPath)
			}
			if ev.Kind == Added {
				up[ev.Name] = ev.Ifindex
			} else {
				delete(up, ev.Name)
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); ; {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(end) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("%s: interfaces now %v", what, up)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	a := node.Pod("a")
	wait("existing pod", func() bool { _, ok := up[a.HostVeth]; return ok && len(up) == 1 })
	b, err := node.AddPod(netnstest.PodSpec{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	wait("added pod", func() bool { _, ok := up[b.HostVeth]; return ok })
	// A veth pair inside the node and a capture veth: never pod-facing.
	for _, args := range [][]string{
		{"ip", "-n", node.NetnsName, "link", "add", "inner0", "type", "veth", "peer", "name", "inner1"},
		{"ip", "-n", node.NetnsName, "link", "add", "flc0", "type", "veth", "peer", "name", "m0", "netns", b.NetnsName},
		{"ip", "-n", node.NetnsName, "link", "del", a.HostVeth},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	wait("deleted pod veth", func() bool { _, ok := up[a.HostVeth]; return !ok })
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(up) != 1 || up[b.HostVeth] == 0 {
		t.Errorf("interfaces %v, want only %s", up, b.HostVeth)
	}
}
