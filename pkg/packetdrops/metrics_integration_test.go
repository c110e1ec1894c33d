//go:build integration

package packetdrops

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// unprivilegedChild marks the re-executed test binary that runs without
// the capabilities bpf() needs.
const unprivilegedChild = "FLOWLENS_PACKETDROPS_UNPRIVILEGED"

// TestFailedLoadRegistersNoMetrics: with observe mode auto the agent goes
// on when the program cannot load; the drop metrics must then not be
// registered (frozen at 0 they would say nothing was dropped). The
// kernel really refuses the load: the test binary runs again with
// CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN out of its bounding set.
func TestFailedLoadRegistersNoMetrics(t *testing.T) {
	if os.Getenv(unprivilegedChild) == "1" {
		reg := prometheus.NewRegistry()
		d, err := New(Config{}, reg)
		if err == nil {
			d.Close()
			t.Fatal("New succeeded without CAP_BPF/CAP_SYS_ADMIN: the check below would prove nothing")
		}
		t.Logf("load refused: %v", err)
		mfs, gerr := reg.Gather()
		if gerr != nil {
			t.Fatal(gerr)
		}
		for _, mf := range mfs {
			t.Errorf("metric %s registered although the program did not load", mf.GetName())
		}
		return
	}
	// The successful load registers them, so the check above can fail.
	reg := prometheus.NewRegistry()
	d, err := New(Config{}, reg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	if err := d.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	for _, want := range []string{"flowlens_packetdrops_pending_tuples", "flowlens_packetdrops_not_network_total", "flowlens_packetdrops_read_errors_total"} {
		if !names[want] {
			t.Errorf("%s not registered after a successful load (have %v)", want, names)
		}
	}

	drop := "-bpf,-perfmon,-sys_admin"
	cmd := exec.Command("setpriv", "--bounding-set="+drop, "--inh-caps="+drop, "--",
		os.Args[0], "-test.run=^TestFailedLoadRegistersNoMetrics$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), unprivilegedChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged run: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "load refused:") {
		t.Fatalf("the unprivileged run did not reach the failed load:\n%s", out)
	}
	t.Logf("unprivileged run:\n%s", out)
}
