//go:build integration

package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/mirror"
	"github.com/flowlens/flowlens/test/netnstest"
)

// capsChildEnv makes the test binary act as a hostNetwork agent's mirror:
// its value is "mechanism,podIP".
const capsChildEnv = "FLOWLENS_MIRROR_CAPS_CHILD"

// leftoversChild as capsChildEnv's value: the child removes a previous
// run's mirror (mirror.RemoveLeftovers) and says what happened.
const leftoversChild = "leftovers"

func TestMain(m *testing.M) {
	if v := os.Getenv(capsChildEnv); v != "" {
		os.Exit(mirrorCapsChild(v))
	}
	os.Exit(m.Run())
}

// mirrorCapsChild runs the mirror in its own network namespace (as the
// chart's hostNetwork agent does: NetnsPath ""), says "ready" once the pod
// is mirrored, and closes the mirror when its standard input ends.
func mirrorCapsChild(v string) int {
	if v == leftoversChild {
		n, err := mirror.RemoveLeftovers("")
		switch {
		case errors.Is(err, unix.EPERM):
			fmt.Println("eperm", n)
		case err != nil:
			fmt.Println("error:", err)
		default:
			fmt.Println("removed", n)
		}
		return 0
	}
	mech, ip, _ := strings.Cut(v, ",")
	m, err := mirror.New(mirror.Config{Mechanism: mech}, nil)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := m.Reconcile([]netip.Addr{netip.MustParseAddr(ip)}); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready", m.Mechanism())
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := m.Close(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("closed")
	return 0
}

// The chart gives the agent NET_ADMIN, BPF and PERFMON and nothing else
// (no SYS_ADMIN: no setns; uid 0 in the node's namespace). With exactly
// those, the mirror creates its capture veth, mirrors with either
// mechanism, and removes everything again.
func TestMirrorWorksWithTheChartsCapabilities(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "mircap", Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	client, server := node.Pod("client"), node.Pod("server")
	srv, err := server.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, mech := range []string{mirror.MechanismTCX, mirror.MechanismTC} {
		t.Run(mech, func(t *testing.T) {
			cmd := exec.Command("ip", "netns", "exec", node.NetnsName,
				"setpriv", "--bounding-set=-all,+net_admin,+bpf,+perfmon", "--inh-caps=-all", "--reuid=0",
				self, "-test.run=^$")
			cmd.Env = append(os.Environ(), capsChildEnv+"="+mech+","+server.IPv4.String())
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
			if !lines.Scan() || lines.Text() != "ready "+mech {
				t.Fatalf("child: %q, want %q\n%s", lines.Text(), "ready "+mech, stderr.String())
			}
			t.Logf("child's effective capabilities: %s", capsOf(t, cmd.Process.Pid))
			before := rxPackets(t, node, "flc1")
			if _, err := netnstest.SendExactly(client, srv.Addr(), 1<<20, 64<<10); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			if got := rxPackets(t, node, "flc1") - before; got == 0 {
				t.Errorf("no copy reached the capture peer with %s", mech)
			}
			stdin.Close()
			if !lines.Scan() || lines.Text() != "closed" {
				t.Fatalf("child after close: %q\n%s", lines.Text(), stderr.String())
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v\n%s", err, stderr.String())
			}
			if out, _ := node.Exec("ip", "-o", "link", "show"); strings.Contains(string(out), "flc0") {
				t.Errorf("capture veth left:\n%s", out)
			}
			if out, _ := node.Exec("tc", "filter", "show", "dev", server.HostVeth, "ingress"); len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("filters left on %s: %s", server.HostVeth, out)
			}
		})
	}
}

// capsOf returns the CapEff line of a process: the proof that the child
// ran without SYS_ADMIN (it fails the test if SYS_ADMIN is in it).
func capsOf(t *testing.T, pid int) string {
	t.Helper()
	// ip netns exec and setpriv exec: the pid is the test binary's now.
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			const sysAdmin = 21
			if eff&(1<<sysAdmin) != 0 {
				t.Fatalf("child has CAP_SYS_ADMIN (CapEff %x): the test proves nothing", eff)
			}
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no CapEff in /proc/%d/status", pid)
	return ""
}

func rxPackets(t *testing.T, node *netnstest.Node, dev string) uint64 {
	t.Helper()
	out, err := node.Exec("cat", "/sys/class/net/"+dev+"/statistics/rx_packets")
	if err != nil {
		t.Fatalf("rx_packets of %s: %v %s", dev, err, out)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An agent with the mirror off removes a killed run's mirror with
// NET_ADMIN alone (the chart always grants it); without NET_ADMIN it gets
// EPERM (the agent logs it and runs on) and nothing is half removed.
func TestMirrorLeftoversNeedOnlyNetAdmin(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "mirleft", Pods: []netnstest.PodSpec{{Name: "server"}}})
	server := node.Pod("server")
	killed, err := mirror.New(mirror.Config{NetnsPath: node.NetnsPath, Mechanism: mirror.MechanismTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := killed.Reconcile([]netip.Addr{server.IPv4}); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(caps string) string {
		t.Helper()
		cmd := exec.Command("ip", "netns", "exec", node.NetnsName,
			"setpriv", "--bounding-set="+caps, "--inh-caps=-all", "--reuid=0", self, "-test.run=^$")
		cmd.Env = append(os.Environ(), capsChildEnv+"="+leftoversChild)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child (%s): %v", caps, err)
		}
		return strings.TrimSpace(string(out))
	}
	filters := func() string {
		t.Helper()
		out, err := node.Exec("tc", "filter", "show", "dev", server.HostVeth, "ingress")
		if err != nil {
			t.Fatalf("tc filter show: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run("-all"); got != "eperm 0" {
		t.Errorf("without NET_ADMIN: %q, want \"eperm 0\"", got)
	}
	if !strings.Contains(filters(), "mirred") {
		t.Error("without NET_ADMIN the leftover filter is gone: the test proves nothing")
	}
	if got := run("-all,+net_admin"); got != "removed 3" { // 2 filters, 1 pair
		t.Errorf("with NET_ADMIN: %q, want \"removed 3\"", got)
	}
	if f := filters(); f != "" {
		t.Errorf("filters left on %s: %s", server.HostVeth, f)
	}
	if out, _ := node.Exec("ip", "-o", "link", "show"); strings.Contains(string(out), "flc0") {
		t.Errorf("capture veth left:\n%s", out)
	}
}
