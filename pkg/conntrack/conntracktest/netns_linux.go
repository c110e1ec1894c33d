package conntracktest

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
)

// NewNetNS creates a network namespace named fl-<random>-<suffix> and
// returns its path and a function deleting it.
func NewNetNS(suffix string) (name, path string, cleanup func() error, err error) {
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", "", nil, fmt.Errorf("random netns name: %w", err)
	}
	name = "fl-" + hex.EncodeToString(r[:]) + "-" + suffix
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", "", nil, fmt.Errorf("ip netns add %s (needs root and iproute2): %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	cleanup = func() error {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return name, netns.Path(name), cleanup, nil
}

// Populate inserts entries 0..n-1 of SyntheticEntry into the conntrack table
// of the namespace at path, with accounting and timestamps enabled first so
// the entries carry every attribute a real node's do.
func Populate(path string, n int) error {
	for _, s := range []string{"net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp"} {
		if err := netns.WriteSysctl(path, s, "1"); err != nil {
			return err
		}
	}
	i := 0
	return insert(path, func() (Entry, bool) {
		if i == n {
			return Entry{}, false
		}
		i++
		return SyntheticEntry(i - 1), true
	})
}

// Insert creates entries in the conntrack table of the namespace at path.
func Insert(path string, entries ...Entry) error {
	i := 0
	return insert(path, func() (Entry, bool) {
		if i == len(entries) {
			return Entry{}, false
		}
		i++
		return entries[i-1], true
	})
}

// insert sends create messages in batches without per-message ACKs, which
// makes 32k entries take well under a second; a failed create comes back as
// an error message and fails the call.
func insert(path string, next func() (Entry, bool)) error {
	var fd int
	err := netns.Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return fmt.Errorf("insert conntrack entries: open socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return fmt.Errorf("insert conntrack entries: rcvbuf: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("insert conntrack entries: bind: %w", err)
	}
	const flags = 0x1 | 0x400 | 0x200 // NLM_F_REQUEST|NLM_F_CREATE|NLM_F_EXCL
	buf := make([]byte, 0, 64<<10)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("insert conntrack entries: send: %w", err)
		}
		buf = buf[:0]
		return checkErrors(fd)
	}
	for seq := uint32(1); ; seq++ {
		e, ok := next()
		if !ok {
			break
		}
		buf = AppendMessage(buf, 0, flags, seq, e)
		if len(buf) > 60<<10 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// checkErrors reads, without blocking, any error messages the kernel queued
// for the batch just sent (no ACKs were asked for, so success is silence).
func checkErrors(fd int) error {
	rb := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, rb, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return fmt.Errorf("insert conntrack entries: receive: %w", err)
		}
		b := rb[:n]
		for len(b) >= 20 {
			l := int(binary.NativeEndian.Uint32(b))
			typ := binary.NativeEndian.Uint16(b[4:])
			if typ == 2 { // NLMSG_ERROR
				if code := int32(binary.NativeEndian.Uint32(b[16:])); code != 0 {
					return fmt.Errorf("insert conntrack entries: create entry seq %d: %w",
						binary.NativeEndian.Uint32(b[8:]), unix.Errno(-code))
				}
			}
			if l < 16 || l > len(b) {
				break
			}
			b = b[(l+3)&^3:]
		}
	}
}

// NewTable creates a fresh namespace holding an n-entry conntrack table (see
// Populate) and returns its path and a cleanup deleting it.
func NewTable(n int) (path string, cleanup func() error, err error) {
	_, path, cleanup, err = NewNetNS("ct")
	if err != nil {
		return "", nil, err
	}
	if err := Populate(path, n); err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// Table is NewTable for tests and benchmarks: it fails tb on error and
// deletes the namespace in tb.Cleanup.
func Table(tb testing.TB, n int) string {
	tb.Helper()
	path, cleanup, err := NewTable(n)
	if err != nil {
		tb.Fatalf("build %d-entry conntrack table: %v", n, err)
	}
	tb.Cleanup(func() {
		if err := cleanup(); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	return path
}

// NetNS is NewNetNS for tests: it fails tb on error and deletes the
// namespace in tb.Cleanup.
func NetNS(tb testing.TB, suffix string) (name, path string) {
	tb.Helper()
	name, path, cleanup, err := NewNetNS(suffix)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := cleanup(); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	return name, path
}
