// Package netns runs code inside a Linux network namespace and reads or
// writes the sysctls that are private to one.
//
// A network namespace belongs to an OS thread, not to a goroutine, so Do locks
// the calling goroutine to its thread for the duration of fn. Sockets created
// inside fn stay bound to the namespace after Do returns, which is how callers
// keep using a netlink socket of another namespace from any goroutine.
package netns

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrNotSupported is returned on systems without Linux network namespaces.
var ErrNotSupported = errors.New("network namespaces are not supported on this system")

// Path returns the file of the named namespace as `ip netns add NAME` creates it.
func Path(name string) string { return filepath.Join("/run/netns", name) }

// sysctlFile maps "net.netfilter.nf_conntrack_acct" to its /proc/sys file.
func sysctlFile(name string) (string, error) {
	if name == "" || strings.Contains(name, "..") || strings.ContainsAny(name, "/ ") {
		return "", fmt.Errorf("invalid sysctl name %q", name)
	}
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/"), nil
}
