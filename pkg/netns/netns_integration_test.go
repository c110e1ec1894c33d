//go:build integration

package netns_test

import (
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/netns"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("netns integration tests need root")
	}
	_, path := conntracktest.NetNS(t, "nsx")
	return path
}

func TestDoEntersTheNamespaceAndRestoresTheThread(t *testing.T) {
	path := newNS(t)
	host := inode(t, "/proc/self/ns/net")
	target := inode(t, path)
	if host == target {
		t.Fatal("test namespace is the host's")
	}
	wantErr := errors.New("fn failed")
	var inside uint64
	err := netns.Do(path, func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		return wantErr
	})
	if !errors.Is(err, wantErr) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if inside != target {
		t.Errorf("fn ran in netns inode %d, want %d", inside, target)
	}
	// Many goroutines afterwards: none may land on a thread left behind in
	// the test namespace.
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if got := inode(t, "/proc/thread-self/ns/net"); got != host {
				t.Errorf("a goroutine ran in netns %d after Do, want host %d", got, host)
			}
		})
	}
	wg.Wait()
}

func TestSysctlWriteIsPrivateToTheNamespace(t *testing.T) {
	path := newNS(t)
	const name = "net.netfilter.nf_conntrack_acct"
	host, err := netns.ReadSysctl("", name)
	if err != nil {
		t.Fatal(err)
	}
	want := "1"
	if host == "1" {
		want = "0"
	}
	if err := netns.WriteSysctl(path, name, want); err != nil {
		t.Fatalf("WriteSysctl: %v", err)
	}
	if got, err := netns.ReadSysctl(path, name); err != nil || got != want {
		t.Errorf("in netns %s = %q (%v), want %q", name, got, err, want)
	}
	if got, _ := netns.ReadSysctl("", name); got != host {
		t.Errorf("host %s changed from %q to %q", name, host, got)
	}
}

func TestWriteSysctlNamesTheFailingSysctl(t *testing.T) {
	path := newNS(t)
	err := netns.WriteSysctl(path, "net.netfilter.no_such_sysctl", "1")
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want a not-exist error", err)
	}
	if want := "net.netfilter.no_such_sysctl"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
}
