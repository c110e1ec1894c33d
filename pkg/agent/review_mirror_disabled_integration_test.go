//go:build integration

package agent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/mirror"
)

// TestReviewRestartWithMirrorDisabledRemovesLeftovers: an agent with the
// tc mirror is killed (-9, OOM, the grace period ran out while it
// exported): its u32+mirred filters stay on the opted-in pod's interface
// and the capture veth stays. The agent is then restarted with the mirror
// turned off (helm upgrade --set l7.enabled=false, mirror.enabled: false).
// Nothing ever removes those leftovers: every packet of the pod keeps
// being cloned to flc0 for as long as the node runs, and `helm uninstall`
// later leaves them too. The restarted agent knows our markers (priority,
// class id, alias) and must converge to "no mirror".
func TestReviewRestartWithMirrorDisabledRemovesLeftovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newMirrorEnv(t, ctx)
	e.annotatePod(t, ctx, "shop", "server", "both")

	// What a killed agent leaves.
	crashed, err := mirror.New(mirror.Config{NetnsPath: e.node.NetnsPath, Mechanism: mirror.MechanismTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := crashed.Reconcile([]netip.Addr{e.server.IPv4}); err != nil {
		t.Fatal(err)
	}
	if tc, _ := e.ourArtifacts(t, e.server.HostVeth); tc != [2]int{1, 1} {
		t.Fatalf("set-up: our tc filters %v, want [1 1]", tc)
	}

	// The restarted agent, mirror off, runs a while and stops cleanly.
	cfg := agentconfig.Default()
	cfg.NodeName = "node-a"
	cfg.Conntrack.NetNS = e.node.NetnsPath
	cfg.Counters.Source = agentconfig.CountersConntrack
	cfg.Kubernetes.Enabled, cfg.Kubernetes.Kubeconfig, cfg.Kubernetes.OwnNodeOnly = true, e.saKubeconfig, true
	cfg.Export.Collector = e.collect
	cfg.Server.Listen = "127.0.0.1:0"
	dir, err := os.MkdirTemp("", "flmirror")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.L7.EVE.Source, cfg.L7.EVE.Path = "unix_stream", filepath.Join(dir, "eve.sock")
	off := false
	cfg.Mirror.Enabled = &off
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	time.Sleep(5 * time.Second) // several default reconcile intervals' worth of start-up
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("agent did not stop")
	}
	// Still mirrored to the capture veth, opted in or not, with no agent
	// mirroring anything.
	e.annotatePod(t, ctx, "shop", "server", "")
	e.checkNothingLeft(t)
}
