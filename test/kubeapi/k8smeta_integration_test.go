//go:build integration

package kubeapi_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
	"github.com/flowlens/flowlens/pkg/k8smeta"
	"github.com/flowlens/flowlens/test/kubeapi"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func startCluster(t *testing.T, ctx context.Context) *kubeapi.Cluster {
	t.Helper()
	c, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		// A missing binary fails the test: CI must have run hack/install-deps.sh.
		t.Fatalf("start etcd + kube-apiserver: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAgentWithRBACFromManifestEnrichesAndFollowsAnnotations(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, ctx)
	admin, err := c.AdminClient()
	must(t, err)

	must(t, c.Apply(ctx, filepath.Join(repoRoot(t), "build", "rbac", "agent.yaml")))
	saKubeconfig, err := c.ServiceAccountKubeconfig(ctx, "flowlens", "flowlens-agent")
	must(t, err)

	must(t, kubeapi.EnsureNamespace(ctx, admin, "shop"))
	_, err = admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-b"},
	}, metav1.CreateOptions{})
	must(t, err)
	_, err = kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{
		Namespace: "shop", Name: "client", Node: "node-a", IPs: []string{"10.244.0.2"}, Labels: map[string]string{"app": "client"}})
	must(t, err)
	apiPod, err := kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{
		Namespace: "shop", Name: "api", Node: "node-b", IPs: []string{"10.244.1.3"}, Labels: map[string]string{"app": "api"}})
	must(t, err)
	svc, err := admin.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "api"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	must(t, err)
	http, port := "http", int32(8080)
	proto := corev1.ProtocolTCP
	nodeB := "node-b"
	_, err = admin.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "api-1", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{"10.244.1.3"}, NodeName: &nodeB,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "api", UID: apiPod.UID},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &http, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{})
	must(t, err)

	// The agent runs with the ServiceAccount's token only.
	saClient, err := k8smeta.NewClient(saKubeconfig)
	must(t, err)
	t.Run("service account cannot read secrets or write pods", func(t *testing.T) {
		if _, err := saClient.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list secrets: err = %v, want Forbidden", err)
		}
		if err := saClient.CoreV1().Pods("shop").Delete(ctx, "client", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("delete pod: err = %v, want Forbidden", err)
		}
		if _, err := saClient.CoreV1().Pods("shop").Get(ctx, "client", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get pod: err = %v, want Forbidden (informers only list and watch)", err)
		}
	})

	meta, err := k8smeta.New(k8smeta.Config{Client: saClient, NodeName: "node-a"}, prometheus.NewRegistry())
	must(t, err)
	mctx, mcancel := context.WithCancel(ctx)
	defer func() { mcancel(); meta.Wait() }()
	syncCtx, syncCancel := context.WithTimeout(mctx, 30*time.Second)
	defer syncCancel()
	// Start fails if any informer is denied by RBAC: it never syncs.
	must(t, meta.Start(syncCtx))

	t.Run("ClusterIP flow is enriched with pods, service port and flow type", func(t *testing.T) {
		tup := flow.NewTuple(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.3"), 40000, 8080, flow.ProtoTCP)
		r := flow.Record{Conn: flow.Conn{
			Tuple: tup, OrigDstIP: netip.MustParseAddr(svc.Spec.ClusterIP).As16(), OrigDstPort: 80,
			StartNanos: time.Now().UnixNano(),
		}}
		meta.Enrich(&r)
		wantSrc := flow.Endpoint{PodName: "client", PodNamespace: "shop", NodeName: "node-a", Labels: `{"app":"client"}`}
		wantDst := flow.Endpoint{PodName: "api", PodNamespace: "shop", NodeName: "node-b", Labels: `{"app":"api"}`}
		if r.Source != wantSrc || r.Destination != wantDst {
			t.Errorf("endpoints = %+v -> %+v, want %+v -> %+v", r.Source, r.Destination, wantSrc, wantDst)
		}
		if r.ServicePortName != "shop/api:http" || !r.ClusterIP {
			t.Errorf("service = %q (ClusterIP %v), want shop/api:http (true)", r.ServicePortName, r.ClusterIP)
		}
		if r.FlowType != flow.FlowTypeInterNode {
			t.Errorf("FlowType = %v, want inter-node", r.FlowType)
		}
	})

	t.Run("own-node mode lists only this node's pods and finds remote ones through EndpointSlices", func(t *testing.T) {
		own, err := k8smeta.New(k8smeta.Config{Client: saClient, NodeName: "node-a", OwnNodeOnly: true}, prometheus.NewRegistry())
		must(t, err)
		octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
		defer func() { ocancel(); own.Wait() }()
		must(t, own.Start(octx))
		tup := flow.NewTuple(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.3"), 40000, 8080, flow.ProtoTCP)
		r := flow.Record{Conn: flow.Conn{Tuple: tup, OrigDstIP: tup.DstIP, OrigDstPort: 8080, StartNanos: time.Now().UnixNano()}}
		own.Enrich(&r)
		wantSrc := flow.Endpoint{PodName: "client", PodNamespace: "shop", NodeName: "node-a", Labels: `{"app":"client"}`}
		// Known only from the EndpointSlice: no labels.
		wantDst := flow.Endpoint{PodName: "api", PodNamespace: "shop", NodeName: "node-b"}
		if r.Source != wantSrc || r.Destination != wantDst {
			t.Errorf("endpoints = %+v -> %+v, want %+v -> %+v", r.Source, r.Destination, wantSrc, wantDst)
		}
		// The field selector really filtered: a node-b pod no Service
		// selects is unknown. A node-a pod created after it is the
		// readiness mark: a watch delivers in creation order, so once
		// own-node mode has the later pod it would have had the earlier.
		_, err = kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{Namespace: "shop", Name: "batch", Node: "node-b", IPs: []string{"10.244.1.9"}})
		must(t, err)
		_, err = kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{Namespace: "shop", Name: "marker", Node: "node-a", IPs: []string{"10.244.0.9"}})
		must(t, err)
		waitIndexed(t, "own-node mode: the later node-a pod", own, netip.MustParseAddr("10.244.0.9"))
		waitIndexed(t, "cluster-wide mode: the node-b pod (else the negative check below proves nothing)", meta, netip.MustParseAddr("10.244.1.9"))
		if _, ok := own.LookupPod(netip.MustParseAddr("10.244.1.9"), time.Time{}); ok {
			t.Error("own-node mode indexed a pod of another node")
		}
	})

	t.Run("annotation flips take effect", func(t *testing.T) {
		c := flow.Conn{Tuple: flow.NewTuple(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.3"), 40000, 8080, flow.ProtoTCP)}
		steps := []struct {
			name string
			do   func() error
			want flow.L7Want
		}{
			{"namespace both", func() error { return annotateNamespace(ctx, admin, "shop", "both") }, flow.L7Source | flow.L7Destination},
			{"client pod overrides with ingress", func() error { return annotatePod(ctx, admin, "shop", "client", "INGRESS") }, flow.L7Destination},
			{"namespace annotation removed", func() error { return annotateNamespace(ctx, admin, "shop", "") }, flow.L7None},
			{"api pod ingress", func() error { return annotatePod(ctx, admin, "shop", "api", "ingress") }, flow.L7Destination},
		}
		for _, s := range steps {
			must(t, s.do())
			began := time.Now()
			for meta.L7Want(&c) != s.want {
				// A correctness bound (the change must arrive through
				// the watch, not a resync): the latency is logged
				// below, typically a few ms.
				if time.Since(began) > flipBound {
					t.Fatalf("%s: L7Want = %b after %s, want %b", s.name, meta.L7Want(&c), flipBound, s.want)
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("%s: took effect after %v", s.name, time.Since(began).Round(10*time.Microsecond))
		}
	})
}

// flipBound is how long an annotation change may take to reach L7Want. The
// agent's informers never resync (resync period 0), so only the watch can
// deliver it: past this bound it was lost or misapplied, however slow the
// machine.
const flipBound = 10 * time.Second

// waitIndexed waits until m resolves ip to a pod.
func waitIndexed(t *testing.T, what string, m *k8smeta.Meta, ip netip.Addr) {
	t.Helper()
	began := time.Now()
	for {
		if _, ok := m.LookupPod(ip, time.Time{}); ok {
			t.Logf("%s indexed after %s", what, time.Since(began).Round(10*time.Microsecond))
			return
		}
		if time.Since(began) > flipBound {
			t.Fatalf("%s: %s not indexed within %s", what, ip, flipBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func annotateNamespace(ctx context.Context, cs kubernetes.Interface, name, v string) error {
	n, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	setAnnotation(&n.ObjectMeta, v)
	_, err = cs.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{})
	return err
}

func annotatePod(ctx context.Context, cs kubernetes.Interface, ns, name, v string) error {
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	setAnnotation(&p.ObjectMeta, v)
	_, err = cs.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
	return err
}

func setAnnotation(m *metav1.ObjectMeta, v string) {
	if v == "" {
		delete(m.Annotations, ipindex.L7Annotation)
		return
	}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[ipindex.L7Annotation] = v
}
