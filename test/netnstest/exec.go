package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// commandTimeout bounds every external command; setup commands take
// milliseconds, so hitting it means something is wedged.
const commandTimeout = 30 * time.Second

// NetnsDir is where iproute2 keeps the files of named namespaces.
const NetnsDir = "/var/run/netns"

// CheckPrereqs reports what this machine lacks to build nodes: root and the
// ip, nft and conntrack programs. The error names every missing piece.
func CheckPrereqs() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)")
	}
	for _, prog := range []string{"ip", "nft", "conntrack"} {
		if _, err := exec.LookPath(prog); err != nil {
			missing = append(missing, fmt.Sprintf("%s program (run hack/install-deps.sh)", prog))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("netnstest: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// run runs a program and returns its standard output; the error carries the
// command line and its standard error, which is what explains a failure.
func run(stdin string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = "timed out after " + commandTimeout.String()
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// runInNetns runs a program inside the named namespace through `ip netns
// exec`, which also gives it the namespace's own /sys.
func runInNetns(netnsName, stdin, name string, args ...string) ([]byte, error) {
	return run(stdin, "ip", append([]string{"netns", "exec", netnsName, name}, args...)...)
}

func addNetns(name string) error {
	if _, err := run("", "ip", "netns", "add", name); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

func deleteNetns(name string) error {
	if _, err := run("", "ip", "netns", "delete", name); err != nil {
		if _, statErr := os.Stat(NetnsDir + "/" + name); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
