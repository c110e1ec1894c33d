//go:build integration

package agent

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/mirror"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewCapturePairIPv6OffInAContainer: pkg/mirror says "IPv6 is
// disabled on both ends" of the capture pair (no addresses, router
// solicitations or MLD reports of its own in the capture). It writes
// net.ipv6.conf.<name>.disable_ipv6 through /proc/sys. In the chart's
// agent container (not privileged) the container runtime mounts
// /proc/sys read-only (runc's readonlyPaths), which is why the chart
// needs an init container with a hostPath for its conntrack sysctls. The
// mirror then only logs "Cannot disable IPv6" and runs on with IPv6 on
// flc0/flc1. This runs the mirror as the chart's agent does: the node's
// namespace as its own, the chart's capabilities, /proc/sys read-only.
func TestReviewCapturePairIPv6OffInAContainer(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "rvip6", Pods: []netnstest.PodSpec{{Name: "server"}}})
	server := node.Pod("server")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// What runc does for /proc/sys in a non-privileged container.
	const roProcSys = `mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"`
	cmd := exec.Command("ip", "netns", "exec", node.NetnsName, "unshare", "-m", "--propagation", "private",
		"sh", "-c", roProcSys, "sh",
		"setpriv", "--bounding-set=-all,+net_admin,+bpf,+perfmon", "--inh-caps=-all", "--reuid=0",
		self, "-test.run=^$")
	cmd.Env = append(os.Environ(), capsChildEnv+"="+mirror.MechanismTC+","+server.IPv4.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready tc" {
		t.Fatalf("child: %q, want ready tc\n%s", lines.Text(), stderr.String())
	}
	for _, n := range []string{"flc0", "flc1"} {
		// The promise is observable: no IPv6 address of its own (so no
		// router solicitation or MLD report from it) on either end.
		out, err := node.Exec("ip", "-6", "-o", "addr", "show", "dev", n)
		if err != nil {
			t.Fatalf("ip -6 addr show dev %s: %v %s", n, err, out)
		}
		if strings.Contains(string(out), "inet6") {
			v, _ := netns.ReadSysctl(node.NetnsPath, "net.ipv6.conf."+n+".disable_ipv6")
			t.Errorf("%s has IPv6 on (disable_ipv6 = %s): %s; the package says IPv6 is disabled on both ends of the capture pair", n, v, strings.TrimSpace(string(out)))
		}
	}
	if s := stderr.String(); strings.Contains(s, "Cannot disable IPv6") {
		t.Logf("the mirror's log: %s", firstLineWith(s, "Cannot disable IPv6"))
	}
	stdin.Close()
	lines.Scan()
	_ = cmd.Wait()
}

func firstLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
