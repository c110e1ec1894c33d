package k8smeta

import (
	"context"
	"fmt"
	"net/netip"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/flowlens/flowlens/pkg/flow"
)

// realisticPod looks like what an API server returns for a Deployment's pod:
// managed fields, a container spec with env, a last-applied annotation,
// container statuses. Most of it is what the transforms drop.
func realisticPod(i int) *corev1.Pod {
	name := fmt.Sprintf("app-%d-7d9c5-%05d", i/10, i)
	ip := fmt.Sprintf("10.244.%d.%d", i>>8, i&255)
	yes := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: fmt.Sprintf("ns-%d", i%50), UID: types.UID(fmt.Sprintf("uid-%d", i)),
			Labels:          map[string]string{"app": fmt.Sprintf("app-%d", i/10), "pod-template-hash": "7d9c5"},
			Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "prometheus.io/scrape": "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: fmt.Sprintf("app-%d-7d9c5", i/10), UID: "rs", Controller: &yes}},
			ManagedFields: []metav1.ManagedFieldsEntry{
				{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1",
					FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"main\"}":{".":{},"f:image":{},"f:env":{}}}}}`)},
				{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, Subresource: "status", FieldsType: "FieldsV1",
					FieldsV1: metav1.NewFieldsV1(`{"f:status":{"f:conditions":{},"f:containerStatuses":{},"f:podIP":{},"f:podIPs":{}}}`)},
			},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node-%d", i%100),
			Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/app:1.2.3", Args: []string{"--port=8080", "--log-level=info"},
				Env:   []corev1.EnvVar{{Name: "POD_NAME", Value: name}, {Name: "CONFIG", Value: strings.Repeat("x", 64)}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			}},
			Volumes: []corev1.Volume{{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "172.18.0.2",
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}, {Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
			},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true, Image: "registry.invalid/app:1.2.3", ImageID: "sha256:" + strings.Repeat("a", 64), ContainerID: "containerd://" + strings.Repeat("b", 64)}},
		},
	}
}

func benchObjects() []runtime.Object {
	var objs []runtime.Object
	for i := 0; i < 10000; i++ {
		objs = append(objs, realisticPod(i))
	}
	// One ReplicaSet per app (the pods' owners) plus two old revisions
	// each, as a Deployment's revisionHistoryLimit keeps them; each
	// carries the pod template, as the API server returns it.
	yes := true
	for a := 0; a < 1000; a++ {
		for rev := 0; rev < 3; rev++ {
			hash := "7d9c5"
			if rev > 0 {
				hash = fmt.Sprintf("old%d", rev)
			}
			tmpl := realisticPod(a * 10)
			objs = append(objs, &appsv1.ReplicaSet{
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("app-%d-%s", a, hash), Namespace: fmt.Sprintf("ns-%d", a%50), UID: types.UID(fmt.Sprintf("rs-%d-%d", a, rev)),
					Labels:          map[string]string{"app": fmt.Sprintf("app-%d", a), "pod-template-hash": hash},
					Annotations:     map[string]string{"deployment.kubernetes.io/revision": "3", "deployment.kubernetes.io/desired-replicas": "10"},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: fmt.Sprintf("app-%d", a), UID: "dep", Controller: &yes}},
					ManagedFields:   tmpl.ManagedFields,
				},
				Spec: appsv1.ReplicaSetSpec{
					Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", a), "pod-template-hash": hash}},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: tmpl.Labels}, Spec: tmpl.Spec},
				},
			})
		}
	}
	port := int32(8080)
	name := "http"
	for s := 0; s < 1000; s++ {
		ns := fmt.Sprintf("ns-%d", s%50)
		svc := fmt.Sprintf("svc-%d", s)
		objs = append(objs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc},
			Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.%d", s>>8, s&255),
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		})
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		}
		for e := 0; e < 10; e++ {
			i := s*10 + e
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.%d.%d", i>>8, i&255)}})
		}
		objs = append(objs, sl)
	}
	return objs
}

func heapAlloc() uint64 {
	goruntime.GC()
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkInformerMemory reports the heap the agent's informers and index
// hold for 10,000 pods of 1,000 Deployments (3,000 ReplicaSets: the
// current one and two old revisions each) and 1,000 Services with
// EndpointSlices. Baseline,
// measured in the same run: plain informers on the same objects without
// the transforms.
func BenchmarkInformerMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		client := fake.NewSimpleClientset(benchObjects()...)
		ctx, cancel := context.WithCancel(context.Background())

		before := heapAlloc()
		plain := informers.NewSharedInformerFactory(client, 0)
		synced := []cache.InformerSynced{
			plain.Core().V1().Pods().Informer().HasSynced,
			plain.Core().V1().Services().Informer().HasSynced,
			plain.Discovery().V1().EndpointSlices().Informer().HasSynced,
			plain.Apps().V1().ReplicaSets().Informer().HasSynced,
		}
		plain.Start(ctx.Done())
		cache.WaitForCacheSync(ctx.Done(), synced...)
		baseline := heapAlloc() - before
		cancel()
		plain.Shutdown()
		plain = nil

		ctx, cancel = context.WithCancel(context.Background())
		before = heapAlloc()
		start := time.Now()
		m, err := New(Config{Client: client, NodeName: "node-0"}, prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			b.Fatal(err)
		}
		syncTime := time.Since(start)
		used := heapAlloc() - before
		if _, ok := m.LookupPod(mustAddr("10.244.0.1"), time.Time{}); !ok {
			b.Fatal("pod 1 not indexed")
		}
		// Pod 0 is in its ReplicaSet's namespace: resolved through it.
		if p, _ := m.LookupPod(mustAddr("10.244.0.0"), time.Time{}); p.WorkloadKind != "Deployment" || p.WorkloadName != "app-0" {
			b.Fatalf("pod 0 workload %s/%s, want Deployment/app-0", p.WorkloadKind, p.WorkloadName)
		}
		cancel()
		m.Wait()
		b.ReportMetric(float64(used)/(1<<20), "agent-MiB")
		b.ReportMetric(float64(baseline)/(1<<20), "baseline-untransformed-informers-MiB")
		b.ReportMetric(syncTime.Seconds(), "sync-s")
		goruntime.KeepAlive(m)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// BenchmarkAnnotationFlip measures how long a namespace's L7 annotation
// change takes to reach L7Want through the informers (a fake API server, so
// this is the agent's own share of the latency). The unit tests only bound
// it generously; this is the figure to watch.
func BenchmarkAnnotationFlip(b *testing.B) {
	client := fake.NewClientset(namespace("shop", ""), pod("shop", "api", "10.244.0.3"))
	m, err := New(Config{Client: client, NodeName: "node-a"}, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); m.Wait() }()
	if err := m.Start(ctx); err != nil {
		b.Fatal(err)
	}
	c := conn("10.244.0.2", "10.244.0.3", 1, 8080, time.Time{})
	modes := []struct {
		annotation string
		want       flow.L7Want
	}{{"ingress", flow.L7Destination}, {"", flow.L7None}}
	var worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mode := modes[i%len(modes)]
		began := time.Now()
		if _, err := client.CoreV1().Namespaces().Update(ctx, namespace("shop", mode.annotation), metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		for m.L7Want(&c) != mode.want {
			if time.Since(began) > 10*time.Second {
				b.Fatalf("annotation %q: L7Want = %b after 10s, want %b", mode.annotation, m.L7Want(&c), mode.want)
			}
			goruntime.Gosched()
		}
		worst = max(worst, time.Since(began))
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/flip")
	b.ReportMetric(float64(worst.Microseconds()), "max-µs/flip")
}
