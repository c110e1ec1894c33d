//go:build integration

package chart

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReviewSuricataWaitStopsOnSIGTERM: while the Suricata sidecar waits
// for the capture interface (the agent has not created it yet: it is
// still syncing, or crash-looping), its container's PID 1 is the chart's
// `/bin/sh -c 'until ...; do sleep 1; done; exec suricata'`. The kernel
// drops a SIGTERM sent to a PID namespace's init that installed no
// handler, so on pod deletion (helm uninstall, rollout, node drain) the
// container ignores the kubelet's SIGTERM and holds the pod for the whole
// terminationGracePeriodSeconds (30 s) until SIGKILL. The waiting command
// must end on SIGTERM. Runs the rendered command as PID 1 of a new PID
// namespace (what the container runtime does) and sends it SIGTERM from
// outside (what the runtime does on stop).
func TestReviewSuricataWaitStopsOnSIGTERM(t *testing.T) {
	r := render(t, "--set", "l7.enabled=true", "--set", "l7.interface=flcrvnone")
	var spec = r.pods()
	var argv []string
	for _, s := range spec {
		for _, c := range s.Containers {
			if c.Name == "suricata" {
				argv = append(append([]string{}, c.Command...), c.Args...)
			}
		}
	}
	if len(argv) == 0 || !strings.Contains(strings.Join(argv, " "), "until") {
		t.Fatalf("no waiting Suricata command rendered: %q", argv)
	}
	if _, err := os.Stat("/sys/class/net/flcrvnone"); err == nil {
		t.Fatal("set-up: flcrvnone exists")
	}
	cmd := exec.Command("unshare", append([]string{"--pid", "--fork", "--kill-child"}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// The container's init: unshare's child.
	var init int
	for deadline := time.Now().Add(5 * time.Second); init == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/task/" + strconv.Itoa(cmd.Process.Pid) + "/children")
		if f := strings.Fields(string(b)); len(f) > 0 {
			init, _ = strconv.Atoi(f[0])
		}
	}
	if init == 0 {
		t.Fatal("the sidecar command did not start")
	}
	time.Sleep(500 * time.Millisecond) // in its wait loop
	if err := syscall.Kill(init, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("the Suricata sidecar's wait (%q) ignored SIGTERM for 5 s: the pod waits its grace period out for SIGKILL", argv[:3])
	}
}
