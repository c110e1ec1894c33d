package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Do runs fn with the calling goroutine's thread in the network namespace at
// path (a file such as /run/netns/NAME or /proc/PID/ns/net). An empty path
// runs fn in the current namespace without switching.
//
// fn must not start goroutines that expect to share its namespace: they run on
// other threads.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)

	runtime.LockOSThread()
	// Open the origin only once locked: before that the goroutine could move
	// to a thread in another namespace between the open and the setns.
	origin, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer unix.Close(origin)

	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	fnErr := fn()
	if err := unix.Setns(origin, unix.CLONE_NEWNET); err != nil {
		// The thread stays locked on purpose: when the goroutine exits the
		// runtime ends a locked thread rather than hand it, still in the
		// wrong namespace, to other goroutines.
		return errors.Join(fnErr, fmt.Errorf("restore netns after %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// ReadSysctl returns the value of sysctl name (dotted form, e.g.
// "net.netfilter.nf_conntrack_acct") as seen from the namespace at path,
// without its trailing newline.
func ReadSysctl(path, name string) (string, error) {
	file, err := sysctlFile(name)
	if err != nil {
		return "", err
	}
	var val string
	err = Do(path, func() error {
		// /proc/sys/net resolves the namespace of the thread that opens the
		// file, so the read has to happen inside Do.
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		val = strings.TrimSpace(string(b))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return val, nil
}

// WriteSysctl sets sysctl name to value in the namespace at path.
func WriteSysctl(path, name, value string) error {
	file, err := sysctlFile(name)
	if err != nil {
		return err
	}
	err = Do(path, func() error {
		return os.WriteFile(file, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
