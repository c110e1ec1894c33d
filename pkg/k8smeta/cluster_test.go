package k8smeta

import (
	"context"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestClusterUIDIsTheKubeSystemNamespaceUID(t *testing.T) {
	newMeta := func(t *testing.T, client *fake.Clientset) *Meta {
		t.Helper()
		m, err := New(Config{Client: client, NodeName: "node-a"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	errors := func(t *testing.T, m *Meta) float64 {
		var d dto.Metric
		if err := m.metrics.clusterUIDErrors.Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetCounter().GetValue()
	}
	t.Run("present", func(t *testing.T) {
		const uid = "3f2a9c1e-55b8-4b1d-9e0f-7c6d5b4a3921"
		m := newMeta(t, fake.NewClientset(
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default", UID: "not-this-one"}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: uid}},
		))
		got, err := m.ClusterUID(context.Background())
		if err != nil || got != uid {
			t.Fatalf("ClusterUID() = %q, %v; want %q", got, err, uid)
		}
		if n := errors(t, m); n != 0 {
			t.Errorf("%v errors counted, want 0", n)
		}
	})
	t.Run("missing is an error, counted", func(t *testing.T) {
		m := newMeta(t, fake.NewClientset())
		got, err := m.ClusterUID(context.Background())
		if err == nil || got != "" || !strings.Contains(err.Error(), "kube-system") {
			t.Fatalf("ClusterUID() = %q, %v; want an error naming kube-system", got, err)
		}
		if n := errors(t, m); n != 1 {
			t.Errorf("%v errors counted, want 1", n)
		}
	})
}
