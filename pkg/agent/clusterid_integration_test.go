//go:build integration

package agent

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/test/kubeapi"
)

// Against a real kube-apiserver, as the agent's ServiceAccount with
// exactly build/rbac/agent.yaml: the Kubernetes context stage resolves the
// cluster id to the kube-system namespace's UID, which that RBAC lets it
// get (and no other namespace); a configured clusterID wins without it.
func TestClusterIDFromKubeSystemUIDWithTheShippedRBAC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		// A missing binary fails the test: CI must have run hack/install-deps.sh.
		t.Fatalf("start etcd + kube-apiserver: %v", err)
	}
	t.Cleanup(c.Stop)
	_, file, _, _ := runtime.Caller(0)
	if err := c.Apply(ctx, filepath.Join(filepath.Dir(file), "..", "..", "build", "rbac", "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	saKubeconfig, err := c.ServiceAccountKubeconfig(ctx, "flowlens", "flowlens-agent")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := c.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	var want string
	// The API server creates kube-system itself, shortly after it serves.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ns, err := admin.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
		if err == nil && ns.UID != "" {
			want = string(ns.UID)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-system never appeared: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	run := func(t *testing.T, clusterID string) string {
		t.Helper()
		cfg := agentconfig.Default()
		cfg.NodeName, cfg.ClusterID = "node-a", clusterID
		cfg.Kubernetes.Enabled, cfg.Kubernetes.Kubeconfig = true, saKubeconfig
		ident := newClusterIdentity(cfg.ClusterID)
		st, err := newContextStage(cfg, ident, nil)
		if err != nil {
			t.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		wait, err := st.start(sctx)
		stop()
		if werr := wait(); err != nil || werr != nil {
			t.Fatalf("context stage: start %v, stop %v", err, werr)
		}
		return ident.get()
	}
	t.Run("from kube-system", func(t *testing.T) {
		if got := run(t, ""); got != want {
			t.Errorf("cluster id %q, want kube-system's UID %q", got, want)
		}
	})
	t.Run("configured wins", func(t *testing.T) {
		if got := run(t, "prod-eu-1"); got != "prod-eu-1" {
			t.Errorf("cluster id %q, want the configured prod-eu-1", got)
		}
	})
	t.Run("the RBAC grants that namespace only", func(t *testing.T) {
		sa, err := kubeapi.Client(saKubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sa.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get namespace default as the agent: %v, want forbidden", err)
		}
	})
}
