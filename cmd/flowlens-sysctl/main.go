// Command flowlens-sysctl sets the node's conntrack sysctls the agent needs
// (nf_conntrack_acct, nf_conntrack_timestamp) from the agent pod's init
// container, then exits.
//
// It exists because an unprivileged container's /proc/sys is read-only, and
// Kubernetes refuses pod-level net.* sysctls for hostNetwork pods: the
// agent's own attempt (conntrack.enableAccounting) fails there. The chart
// mounts the host's /proc/sys/net/netfilter (hostPath) into the init
// container instead; writing through it needs only CAP_NET_ADMIN, which
// the agent holds anyway. Only net.netfilter.* names are accepted, so the
// mount cannot be used for anything else.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "flowlens-sysctl:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("flowlens-sysctl", flag.ContinueOnError)
	dir := fs.String("dir", "/host/proc/sys/net/netfilter", "the node's /proc/sys/net/netfilter, mounted from the host")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("usage: flowlens-sysctl [-dir DIR] net.netfilter.NAME=VALUE [...]")
	}
	for _, a := range fs.Args() {
		file, value, err := target(*dir, a)
		if err != nil {
			return err
		}
		if err := write(file, value); err != nil {
			return fmt.Errorf("set %s: %w", a, err)
		}
		// Read back: a write the kernel ignored (wrong namespace, a
		// read-only mount) must not pass for success.
		got, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("read back %s: %w", a, err)
		}
		if strings.TrimSpace(string(got)) != value {
			return fmt.Errorf("set %s: reads back %q", a, strings.TrimSpace(string(got)))
		}
		fmt.Printf("%s=%s\n", file, value)
	}
	return nil
}

// write never creates the file: a missing one means the mount is not the
// node's netfilter directory, which creating it would hide.
func write(file, value string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// target maps "net.netfilter.nf_conntrack_acct=1" to the file under dir and
// the value, refusing names outside net.netfilter.
func target(dir, arg string) (string, string, error) {
	name, value, ok := strings.Cut(arg, "=")
	const prefix = "net.netfilter."
	base, inNetfilter := strings.CutPrefix(name, prefix)
	switch {
	case !ok || value == "":
		return "", "", fmt.Errorf("%q: want NAME=VALUE", arg)
	case !inNetfilter || base == "" || strings.ContainsAny(base, "./ "):
		return "", "", fmt.Errorf("%q: only %s* sysctls can be set", name, prefix)
	}
	return filepath.Join(dir, base), value, nil
}
