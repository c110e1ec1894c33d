package k8smeta

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterUIDNamespace is the namespace whose UID identifies the cluster:
// every cluster has it from creation to deletion, and its UID is unique,
// which is what makes it the usual cluster id when nothing else names the
// cluster (Theia's clusterUUID stands for the same thing).
const ClusterUIDNamespace = "kube-system"

// ClusterUID returns the UID of the kube-system namespace with one GET
// (RBAC: get on that namespace, build/rbac/agent.yaml). A failure is
// counted in flowlens_k8smeta_cluster_uid_errors_total.
func (m *Meta) ClusterUID(ctx context.Context) (string, error) {
	ns, err := m.cfg.Client.CoreV1().Namespaces().Get(ctx, ClusterUIDNamespace, metav1.GetOptions{})
	if err == nil && ns.UID == "" {
		err = fmt.Errorf("namespace has no UID")
	}
	if err != nil {
		m.metrics.clusterUIDErrors.Inc()
		return "", fmt.Errorf("k8smeta: read cluster id from namespace %s: %w", ClusterUIDNamespace, err)
	}
	return string(ns.UID), nil
}
