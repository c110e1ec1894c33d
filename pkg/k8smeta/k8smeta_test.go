package k8smeta

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func sec(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

type env struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	meta   *Meta
	clock  *clock
	reg    *prometheus.Registry
}

func start(t *testing.T, ownNode bool, objs ...runtime.Object) *env {
	t.Helper()
	client := fake.NewClientset(objs...)
	c := &clock{t: sec(0)}
	reg := prometheus.NewRegistry()
	m, err := New(Config{Client: client, NodeName: "node-a", OwnNodeOnly: ownNode, GracePeriod: time.Minute, Now: c.Now}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); m.Wait() })
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, client: client, meta: m, clock: c, reg: reg}
}

// eventuallyWithin bounds how long eventually waits. It is a correctness
// bound, not a latency target: nothing between the fake API server and the
// index waits on a timer, so a change shows in milliseconds and only a lost
// or misapplied one runs into this. The latency of an annotation change is
// measured by BenchmarkAnnotationFlip; eventually logs the figure it saw.
const eventuallyWithin = 10 * time.Second

// eventually polls cond until it holds, for up to eventuallyWithin.
func eventually(t *testing.T, what string, cond func() (string, bool)) {
	t.Helper()
	began := time.Now()
	deadline := began.Add(eventuallyWithin)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if last, ok = cond(); ok {
			t.Logf("%s after %s", what, time.Since(began).Round(10*time.Microsecond))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last: %s", what, eventuallyWithin, last)
}

type podOpt func(*corev1.Pod)

func onNode(n string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = n } }
func hostNetwork() podOpt    { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }
func created(t time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}
func labels(kv ...string) podOpt { return func(p *corev1.Pod) { p.Labels = pairs(kv) } }
func annotate(v string) podOpt {
	return func(p *corev1.Pod) { p.Annotations = map[string]string{ipindex.L7Annotation: v} }
}
func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func ownedBy(kind, name string) podOpt {
	return func(p *corev1.Pod) { p.OwnerReferences = []metav1.OwnerReference{controllerRef(kind, name)} }
}

func pairs(kv []string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func controllerRef(kind, name string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{Kind: kind, Name: name, UID: types.UID("uid-" + name), Controller: &yes}
}

func pod(ns, name, ip string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func namespace(name, annotation string) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if annotation != "" {
		n.Annotations = map[string]string{ipindex.L7Annotation: annotation}
	}
	return n
}

func node(name string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

func conn(src, dst string, sport, dport uint16, start time.Time) flow.Conn {
	t := flow.NewTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, flow.ProtoTCP)
	c := flow.Conn{Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: t.DstPort}
	if !start.IsZero() {
		c.StartNanos = start.UnixNano()
	}
	return c
}

func (e *env) podAt(ip string, at time.Time) string {
	p, ok := e.meta.LookupPod(netip.MustParseAddr(ip), at)
	if !ok {
		return ""
	}
	return p.Namespace + "/" + p.Name
}

func (e *env) createPod(p *corev1.Pod) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Pods(p.Namespace).Create(e.ctx, p, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) updatePod(p *corev1.Pod) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Pods(p.Namespace).Update(e.ctx, p, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) deletePod(ns, name string) {
	e.t.Helper()
	if err := e.client.CoreV1().Pods(ns).Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func TestPodIPReuse(t *testing.T) {
	const ip = "10.244.0.9"
	tests := []struct {
		name string
		// newFirst: the new pod's add arrives before the old pod's delete.
		newFirst bool
		start    time.Time
		want     string
	}{
		{"delete then create: connection of the old pod maps to the old pod", false, sec(5), "ns/old"},
		{"delete then create: connection after the new pod started maps to the new pod", false, sec(25), "ns/new"},
		{"create then delete: connection of the old pod maps to the old pod", true, sec(5), "ns/old"},
		{"create then delete: connection after the new pod started maps to the new pod", true, sec(25), "ns/new"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, false)
			e.createPod(pod("ns", "old", ip, created(sec(0))))
			eventually(t, "old pod indexed", func() (string, bool) { return e.podAt(ip, sec(1)), e.podAt(ip, sec(1)) == "ns/old" })
			// Deleted at 15, before the new pod (20) took the IP: a
			// connection started at 16 belongs to neither, whichever of
			// the two events the index saw first.
			deleteOld := func() {
				e.clock.Set(sec(15))
				e.deletePod("ns", "old")
				eventually(t, "old pod deleted", func() (string, bool) {
					s := e.podAt(ip, sec(16))
					return s, s == ""
				})
			}
			if !tt.newFirst {
				deleteOld()
			}
			e.clock.Set(sec(21))
			e.createPod(pod("ns", "new", ip, created(sec(20))))
			eventually(t, "new pod indexed", func() (string, bool) { s := e.podAt(ip, sec(22)); return s, s == "ns/new" })
			if tt.newFirst {
				if s := e.podAt(ip, sec(16)); s != "ns/old" {
					t.Fatalf("before the delete, the pod for a connection started at 16 s is %q, want ns/old", s)
				}
				deleteOld()
			}
			e.clock.Set(sec(30))
			if got := e.podAt(ip, tt.start); got != tt.want {
				t.Errorf("pod for connection started at %v = %q, want %q", tt.start.Sub(t0), got, tt.want)
			}
			r := flow.Record{Conn: conn(ip, "203.0.113.1", 1, 443, tt.start)}
			e.meta.Enrich(&r)
			if got := r.Source.PodNamespace + "/" + r.Source.PodName; got != tt.want {
				t.Errorf("Enrich Source = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDeletedPodKeepsItsFlowsForTheGracePeriod(t *testing.T) {
	const ip = "10.244.0.10"
	e := start(t, false, pod("ns", "gone", ip, created(sec(0))))
	e.clock.Set(sec(10))
	e.deletePod("ns", "gone")
	eventually(t, "delete seen", func() (string, bool) { s := e.podAt(ip, sec(11)); return s, s == "" })
	tests := []struct {
		name string
		now  time.Time
		want string
	}{
		{"record without start time within the grace period maps to the deleted pod", sec(60), "gone"},
		{"record without start time after the grace period maps to nobody", sec(71), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := flow.Record{Conn: conn(ip, "203.0.113.1", 1, 443, time.Time{}), ExportNanos: tt.now.UnixNano()}
			e.meta.Enrich(&r)
			if r.Source.PodName != tt.want {
				t.Errorf("Source.PodName = %q, want %q", r.Source.PodName, tt.want)
			}
		})
	}
	t.Run("connection that started while the pod lived maps to it after deletion", func(t *testing.T) {
		r := flow.Record{Conn: conn(ip, "203.0.113.1", 1, 443, sec(5)), ExportNanos: sec(40).UnixNano()}
		e.meta.Enrich(&r)
		if r.Source.PodName != "gone" {
			t.Errorf("Source.PodName = %q, want gone", r.Source.PodName)
		}
	})
}

func TestFinishedPodReleasesItsIP(t *testing.T) {
	const ip = "10.244.0.11"
	e := start(t, false, pod("ns", "job-x", ip, created(sec(0))))
	eventually(t, "indexed", func() (string, bool) { s := e.podAt(ip, time.Time{}); return s, s == "ns/job-x" })
	e.clock.Set(sec(30))
	e.updatePod(pod("ns", "job-x", ip, created(sec(0)), phase(corev1.PodSucceeded)))
	eventually(t, "released", func() (string, bool) { s := e.podAt(ip, sec(31)); return s, s == "" })
	if got := e.podAt(ip, sec(10)); got != "ns/job-x" {
		t.Errorf("connection from before completion maps to %q, want ns/job-x", got)
	}
}

func TestWorkloadResolution(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-5d8f", OwnerReferences: []metav1.OwnerReference{controllerRef("Deployment", "web")}}}
	orphanRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lonely"}}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "backup-2900000", OwnerReferences: []metav1.OwnerReference{controllerRef("CronJob", "backup")}}}
	plainJob := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "migrate"}}
	tests := []struct {
		name     string
		pod      *corev1.Pod
		wantKind string
		wantName string
	}{
		{"pod of a ReplicaSet of a Deployment belongs to the Deployment", pod("ns", "web-5d8f-x", "10.244.1.1", ownedBy("ReplicaSet", "web-5d8f")), "Deployment", "web"},
		{"pod of a bare ReplicaSet belongs to the ReplicaSet", pod("ns", "lonely-x", "10.244.1.2", ownedBy("ReplicaSet", "lonely")), "ReplicaSet", "lonely"},
		{"pod of a StatefulSet belongs to it", pod("ns", "db-0", "10.244.1.3", ownedBy("StatefulSet", "db")), "StatefulSet", "db"},
		{"pod of a DaemonSet belongs to it", pod("ns", "agent-x", "10.244.1.4", ownedBy("DaemonSet", "agent")), "DaemonSet", "agent"},
		{"pod of a Job of a CronJob belongs to the CronJob", pod("ns", "backup-2900000-x", "10.244.1.5", ownedBy("Job", "backup-2900000")), "CronJob", "backup"},
		{"pod of a plain Job belongs to the Job", pod("ns", "migrate-x", "10.244.1.6", ownedBy("Job", "migrate")), "Job", "migrate"},
		{"bare pod has no workload", pod("ns", "debug", "10.244.1.7"), "", ""},
		// Its ReplicaSet is not in the cache (deleted, or not delivered
		// yet): the Deployment controller's pod-template-hash label names
		// the Deployment.
		{"pod of an unknown ReplicaSet with pod-template-hash belongs to the Deployment",
			pod("ns", "api-6b7c9f-x", "10.244.1.8", ownedBy("ReplicaSet", "api-6b7c9f"), labels("app", "api", "pod-template-hash", "6b7c9f")), "Deployment", "api"},
		{"pod of a ReplicaSet orphaned from its Deployment belongs to the ReplicaSet, label or not",
			pod("ns", "legacy-7c9d-x", "10.244.1.10", ownedBy("ReplicaSet", "legacy-7c9d"), labels("pod-template-hash", "7c9d")), "ReplicaSet", "legacy-7c9d"},
		{"pod of an unknown ReplicaSet without the label stays with the ReplicaSet",
			pod("ns", "gone-x", "10.244.1.9", ownedBy("ReplicaSet", "gone")), "ReplicaSet", "gone"},
	}
	orphanedRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "legacy-7c9d"}}
	objs := []runtime.Object{rs, orphanRS, orphanedRS, job, plainJob}
	for _, tt := range tests {
		objs = append(objs, tt.pod)
	}
	e := start(t, false, objs...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := e.meta.LookupPod(netip.MustParseAddr(tt.pod.Status.PodIP), time.Time{})
			if !ok || p.WorkloadKind != tt.wantKind || p.WorkloadName != tt.wantName {
				t.Errorf("workload = %q/%q (found %v), want %q/%q", p.WorkloadKind, p.WorkloadName, ok, tt.wantKind, tt.wantName)
			}
			// Enrichment exports the same workload, for either end.
			c := conn(tt.pod.Status.PodIP, "10.244.1.7", 40000, 80, time.Time{})
			r := flow.Record{Conn: c}
			e.meta.Enrich(&r)
			if r.Source.WorkloadKind != tt.wantKind || r.Source.WorkloadName != tt.wantName || r.Destination.WorkloadKind != "" {
				t.Errorf("Enrich: source workload %q/%q, destination %q/%q; want %q/%q and none (bare pod)",
					r.Source.WorkloadKind, r.Source.WorkloadName, r.Destination.WorkloadKind, r.Destination.WorkloadName, tt.wantKind, tt.wantName)
			}
			r = flow.Record{Conn: conn("10.244.1.7", tt.pod.Status.PodIP, 40000, 80, time.Time{})}
			e.meta.Enrich(&r)
			if r.Destination.WorkloadKind != tt.wantKind || r.Destination.WorkloadName != tt.wantName {
				t.Errorf("Enrich: destination workload %q/%q, want %q/%q", r.Destination.WorkloadKind, r.Destination.WorkloadName, tt.wantKind, tt.wantName)
			}
		})
	}
}

func TestOwnerTransformKeepsOnlyTheController(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-5d8f", UID: "u", ResourceVersion: "7",
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"deployment.kubernetes.io/revision": "2"},
		ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}},
		OwnerReferences: []metav1.OwnerReference{{Kind: "Other", Name: "x"}, controllerRef("Deployment", "web")}}}
	rs.Spec.Template.Spec.Containers = []corev1.Container{{Name: "c", Image: "img"}}
	got, err := transform(rs)
	if err != nil {
		t.Fatal(err)
	}
	g := got.(*appsv1.ReplicaSet)
	yes := true
	want := metav1.ObjectMeta{Namespace: "ns", Name: "web-5d8f", UID: "u", ResourceVersion: "7",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", Controller: &yes}}}
	if !reflect.DeepEqual(g.ObjectMeta, want) || len(g.Spec.Template.Spec.Containers) != 0 {
		t.Errorf("transformed ReplicaSet = %+v, want only %+v", g, want)
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b-1", Labels: map[string]string{"a": "b"},
		OwnerReferences: []metav1.OwnerReference{controllerRef("CronJob", "b")}}}
	gotJob, _ := transform(job)
	if j := gotJob.(*batchv1.Job); j.Labels != nil || len(j.OwnerReferences) != 1 || j.OwnerReferences[0].Name != "b" {
		t.Errorf("transformed Job = %+v", j)
	}
}

func ptr[T any](v T) *T { return &v }

func service(ns, name string, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports},
	}
}

func slice(ns, name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       ports,
	}
}

func endpoint(ip, podNS, podName, nodeName string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses: []string{ip},
		NodeName:  ptr(nodeName),
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: podNS, Name: podName, UID: types.UID("uid-" + podNS + "-" + podName)},
	}
}

func withDNAT(c flow.Conn, vip string, port uint16) flow.Conn {
	c.OrigDstIP = netip.MustParseAddr(vip).As16()
	c.OrigDstPort = port
	return c
}

func TestEnrichWithServicesNodesAndFlowTypes(t *testing.T) {
	e := start(t, false,
		node("node-a", "172.18.0.2"), node("node-b", "172.18.0.3"),
		pod("shop", "client", "10.244.0.2", labels("app", "client")),
		pod("shop", "api-1", "10.244.0.3"),
		pod("shop", "api-2", "10.244.1.3", onNode("node-b")),
		pod("kube-system", "proxy", "172.18.0.2", hostNetwork()),
		service("shop", "api", "10.96.0.20",
			corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			corev1.ServicePort{Name: "grpc", Port: 9090, Protocol: corev1.ProtocolTCP}),
		slice("shop", "api-x1", "api",
			[]discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
			endpoint("10.244.0.3", "shop", "api-1", "node-a"), endpoint("10.244.1.3", "shop", "api-2", "node-b")),
	)
	clientEP := flow.Endpoint{PodName: "client", PodNamespace: "shop", NodeName: "node-a", Labels: `{"app":"client"}`}
	tests := []struct {
		name    string
		conn    flow.Conn
		src     flow.Endpoint
		dst     flow.Endpoint
		svc     string
		cluster bool
		ft      flow.FlowType
	}{
		{
			name: "ClusterIP to a local endpoint names service port, both pods, intra-node",
			conn: withDNAT(conn("10.244.0.2", "10.244.0.3", 40000, 8080, sec(1)), "10.96.0.20", 80),
			src:  clientEP, dst: flow.Endpoint{PodName: "api-1", PodNamespace: "shop", NodeName: "node-a"},
			svc: "shop/api:http", cluster: true, ft: flow.FlowTypeIntraNode,
		},
		{
			name: "ClusterIP to a remote endpoint is inter-node",
			conn: withDNAT(conn("10.244.0.2", "10.244.1.3", 40000, 8080, sec(1)), "10.96.0.20", 9090),
			src:  clientEP, dst: flow.Endpoint{PodName: "api-2", PodNamespace: "shop", NodeName: "node-b"},
			svc: "shop/api:grpc", cluster: true, ft: flow.FlowTypeInterNode,
		},
		{
			name: "NodePort from outside names the service through the endpoint",
			conn: withDNAT(conn("198.51.100.7", "10.244.0.3", 40000, 8080, sec(1)), "172.18.0.2", 30080),
			dst:  flow.Endpoint{PodName: "api-1", PodNamespace: "shop", NodeName: "node-a"},
			svc:  "shop/api:http", ft: flow.FlowTypeFromExternal,
		},
		{
			name: "host-network pod address maps to its node",
			conn: conn("172.18.0.2", "10.244.0.3", 40000, 8080, sec(1)),
			src:  flow.Endpoint{NodeName: "node-a"}, dst: flow.Endpoint{PodName: "api-1", PodNamespace: "shop", NodeName: "node-a"},
			ft: flow.FlowTypeIntraNode,
		},
		{
			name: "pod to the internet is to-external",
			conn: conn("10.244.0.2", "203.0.113.50", 40000, 443, sec(1)),
			src:  clientEP, ft: flow.FlowTypeToExternal,
		},
		{
			name: "pod to another node's address is inter-node",
			conn: conn("10.244.0.2", "172.18.0.3", 40000, 10250, sec(1)),
			src:  clientEP, dst: flow.Endpoint{NodeName: "node-b"}, ft: flow.FlowTypeInterNode,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := flow.Record{Conn: tt.conn}
			e.meta.Enrich(&r)
			if r.Source != tt.src || r.Destination != tt.dst {
				t.Errorf("Source/Destination = %+v / %+v, want %+v / %+v", r.Source, r.Destination, tt.src, tt.dst)
			}
			if r.ServicePortName != tt.svc || r.ClusterIP != tt.cluster {
				t.Errorf("service = %q/%v, want %q/%v", r.ServicePortName, r.ClusterIP, tt.svc, tt.cluster)
			}
			if r.FlowType != tt.ft {
				t.Errorf("FlowType = %v, want %v", r.FlowType, tt.ft)
			}
		})
	}
}

func TestOwnNodeModeResolvesRemotePodsFromEndpointSlices(t *testing.T) {
	e := start(t, true,
		pod("shop", "client", "10.244.0.2"),
		slice("shop", "api-x1", "api",
			[]discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
			endpoint("10.244.1.3", "shop", "api-2", "node-b")),
	)
	r := flow.Record{Conn: conn("10.244.0.2", "10.244.1.3", 1, 8080, sec(1))}
	e.meta.Enrich(&r)
	want := flow.Endpoint{PodName: "api-2", PodNamespace: "shop", NodeName: "node-b"}
	if r.Destination != want || r.FlowType != flow.FlowTypeInterNode {
		t.Fatalf("Destination = %+v (%v), want %+v (inter-node)", r.Destination, r.FlowType, want)
	}
	if err := e.client.DiscoveryV1().EndpointSlices("shop").Delete(e.ctx, "api-x1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "connections started after the slice went map to nobody", func() (string, bool) {
		r := flow.Record{Conn: conn("10.244.0.2", "10.244.1.3", 1, 8080, sec(1))}
		e.meta.Enrich(&r)
		return r.Destination.PodName, r.Destination.PodName == ""
	})
	r = flow.Record{Conn: conn("10.244.0.2", "10.244.1.3", 1, 8080, time.Time{}), ExportNanos: sec(200).UnixNano()}
	e.meta.Enrich(&r)
	if r.Destination.PodName != "" {
		t.Errorf("record without start time past the grace period: Destination = %+v, want unknown", r.Destination)
	}
}

func l7(e *env, src, dst string) flow.L7Want {
	c := conn(src, dst, 1, 2, time.Time{})
	return e.meta.L7Want(&c)
}

func TestL7AnnotationPolicy(t *testing.T) {
	tests := []struct {
		name   string
		nsAnn  string
		srcAnn string
		dstAnn string
		want   flow.L7Want
	}{
		{name: "no annotation wants nothing", want: flow.L7None},
		{name: "egress on the source pod wants the source", srcAnn: "egress", want: flow.L7Source},
		{name: "ingress on the destination pod wants the destination", dstAnn: "ingress", want: flow.L7Destination},
		{name: "ingress on the source pod wants nothing", srcAnn: "ingress", want: flow.L7None},
		{name: "egress on the destination pod wants nothing", dstAnn: "egress", want: flow.L7None},
		{name: "both on both pods wants both ends", srcAnn: "both", dstAnn: "Both", want: flow.L7Source | flow.L7Destination},
		{name: "values are case-insensitive", srcAnn: "EGRESS", want: flow.L7Source},
		{name: "namespace annotation applies to its pods", nsAnn: "both", want: flow.L7Source | flow.L7Destination},
		{name: "pod annotation overrides its namespace's", nsAnn: "both", srcAnn: "ingress", dstAnn: "egress", want: flow.L7None},
		{name: "invalid pod value falls back to the namespace", nsAnn: "egress", srcAnn: "sideways", want: flow.L7Source},
		{name: "invalid namespace value is treated as absent", nsAnn: "everything", want: flow.L7None},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var so, do []podOpt
			if tt.srcAnn != "" {
				so = append(so, annotate(tt.srcAnn))
			}
			if tt.dstAnn != "" {
				do = append(do, annotate(tt.dstAnn))
			}
			e := start(t, false, namespace("app", tt.nsAnn),
				pod("app", "src", "10.244.0.2", so...), pod("app", "dst", "10.244.0.3", do...))
			if got := l7(e, "10.244.0.2", "10.244.0.3"); got != tt.want {
				t.Errorf("L7Want = %b, want %b", got, tt.want)
			}
		})
	}
}

func TestL7AnnotationChangesTakeEffectWithinASecond(t *testing.T) {
	e := start(t, false, namespace("app", ""), pod("app", "src", "10.244.0.2"), pod("app", "dst", "10.244.0.3"))
	setNS := func(v string) {
		t.Helper()
		if _, err := e.client.CoreV1().Namespaces().Update(e.ctx, namespace("app", v), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, want flow.L7Want) {
		t.Helper()
		eventually(t, what, func() (string, bool) {
			got := l7(e, "10.244.0.2", "10.244.0.3")
			return fmt.Sprintf("%b", got), got == want
		})
	}
	setNS("ingress")
	expect("namespace annotation added after its pods exist", flow.L7Destination)
	e.updatePod(pod("app", "src", "10.244.0.2", annotate("egress")))
	expect("pod annotation added", flow.L7Source|flow.L7Destination)
	setNS("")
	expect("namespace annotation removed", flow.L7Source)
	e.updatePod(pod("app", "src", "10.244.0.2"))
	expect("pod annotation removed", flow.L7None)
}

func TestInvalidAnnotationIsLoggedOncePerObjectAndValue(t *testing.T) {
	e := start(t, false, namespace("app", ""), pod("app", "p", "10.244.0.2", annotate("sideways")))
	counter := func() float64 {
		var m dto.Metric
		if err := e.meta.metrics.invalidL7.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	if got := counter(); got != 1 {
		t.Fatalf("after add: %v invalid values logged, want 1", got)
	}
	// The same value again (an unrelated update) is not logged again.
	for i := 0; i < 3; i++ {
		p := pod("app", "p", "10.244.0.2", annotate("sideways"), labels("rev", strings.Repeat("x", i+1)))
		e.updatePod(p)
	}
	eventually(t, "updates applied", func() (string, bool) {
		p, _ := e.meta.LookupPod(netip.MustParseAddr("10.244.0.2"), time.Time{})
		return p.Labels, p.Labels == `{"rev":"xxx"}`
	})
	if got := counter(); got != 1 {
		t.Errorf("after repeated updates with the same value: %v logged, want 1", got)
	}
	e.updatePod(pod("app", "p", "10.244.0.2", annotate("upwards")))
	eventually(t, "a new invalid value is logged", func() (string, bool) { return "", counter() == 2 })
	if _, err := e.client.CoreV1().Namespaces().Update(e.ctx, namespace("app", "nope"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a namespace's invalid value is logged", func() (string, bool) { return "", counter() == 3 })
}

func TestNewNamesTheMissingField(t *testing.T) {
	client := fake.NewClientset()
	reg := prometheus.NewRegistry()
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no client", Config{NodeName: "n"}, "Client"},
		{"no node name", Config{Client: client}, "NodeName"},
		{"negative grace period", Config{Client: client, NodeName: "n", GracePeriod: -1}, "GracePeriod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, reg)
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("err = %v, want one naming %s", err, tt.field)
			}
		})
	}
}

func TestPodTransformKeepsOnlyWhatEnrichmentReads(t *testing.T) {
	p := pod("ns", "p", "10.0.0.1", labels("app", "x", "tier", "web"), ownedBy("ReplicaSet", "rs"), created(sec(0)))
	p.Annotations = map[string]string{ipindex.L7Annotation: "both", "kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1000)}
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "img", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}}}
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::1"})
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(sec(30))},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(sec(2))},
	}
	got := transformPod(p)
	want := &cachedPod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: p.UID, CreationTimestamp: metav1.NewTime(sec(0))},
		NodeName:   "node-a", IPs: []string{"10.0.0.1", "fd00::1"},
		Start:     sec(2), // scheduled; readiness says nothing about the address
		OwnerKind: "ReplicaSet", OwnerName: "rs",
		L7: "both", HasL7: true,
		// No pod-template-hash label: no Deployment fallback.
		LabelsJSON: `{"app":"x","tier":"web"}`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("transformPod =\n%+v\nwant\n%+v", got, want)
	}
	if cp := got.DeepCopyObject().(*cachedPod); !reflect.DeepEqual(cp, got) || &cp.IPs[0] == &got.IPs[0] {
		t.Error("DeepCopyObject is not a deep copy")
	}
}

func TestTransformDropsManagedFieldsAndUnreadSpecs(t *testing.T) {
	mf := []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	svc := service("ns", "s", "10.96.0.1", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
	svc.ManagedFields = mf
	svc.Spec.Selector = map[string]string{"app": "x"}
	n := node("n", "172.18.0.2")
	n.ManagedFields = mf
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"img"}}}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "n"})
	ns := namespace("ns", "ingress")
	ns.ManagedFields = mf
	ns.Labels = map[string]string{"team": "a"}
	sl := slice("ns", "s-1", "s", nil, endpoint("10.244.0.1", "ns", "p", "n"))
	sl.ManagedFields = mf
	sl.Endpoints[0].Hints = &discoveryv1.EndpointHints{}

	gs := transformService(svc)
	if gs.ManagedFields != nil || gs.Spec.Selector != nil || gs.Spec.Ports[0].TargetPort != (intstr.IntOrString{}) || gs.Spec.ClusterIP != "10.96.0.1" {
		t.Errorf("service: %+v", gs)
	}
	gn := transformNode(n)
	if gn.ManagedFields != nil || gn.Status.Images != nil || len(gn.Status.Addresses) != 1 {
		t.Errorf("node: %+v", gn)
	}
	gns := transformNamespace(ns)
	if gns.ManagedFields != nil || gns.Labels != nil || gns.Annotations[ipindex.L7Annotation] != "ingress" {
		t.Errorf("namespace: %+v", gns)
	}
	gsl := transformEndpointSlice(sl)
	if gsl.ManagedFields != nil || gsl.Endpoints[0].Hints != nil || gsl.Labels[discoveryv1.LabelServiceName] != "s" || gsl.Endpoints[0].TargetRef.Name != "p" {
		t.Errorf("endpointslice: %+v", gsl)
	}
}
