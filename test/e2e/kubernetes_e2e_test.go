//go:build integration

package e2e_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/kubeapi"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The simulated cluster:
//
//	node-a (index 1, the agent's node)   node-b (index 2)
//	  shop/client  10.244.1.2              store/db   10.244.2.2
//	  shop/web     10.244.1.3              "outside"  10.244.2.3 (no Pod object:
//	  Service shop/web 10.96.1.10:80                   an address outside the cluster)
//	    -> web:8080 (port name http)
//
// The apiserver's --service-cluster-ip-range is 10.96.0.0/16 and 10.96.0.1 is
// its own "kubernetes" Service, so the VIP is pinned to 10.96.1.10 in both
// the nftables DNAT rule and the Service object.
const (
	nodeA, nodeB = "node-a", "node-b"
	webVIP       = "10.96.1.10"
	webPort      = 80
	webTarget    = 8080
	dbPort       = 5432
	outsidePort  = 9000
)

var (
	clientLabels = map[string]string{"app": "client", "tier": "frontend"}
	webLabels    = map[string]string{"app": "web", "tier": "backend", "pod-template-hash": "5d8f7"}
	dbLabels     = map[string]string{"app": "db"}
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// cluster is the simulated cluster with its API objects.
type cluster struct {
	admin        kubernetes.Interface
	saKubeconfig string
	a, b         *netnstest.Node
	svc          netnstest.Service
}

func (c *cluster) pod(name string) *netnstest.Pod {
	if p := c.a.Pod(name); p != nil {
		return p
	}
	return c.b.Pod(name)
}

func TestAgentExportsKubernetesContextFromRealAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := setUpCluster(t, ctx)

	col := agenttest.StartCollector(t)
	eveFile := filepath.Join(t.TempDir(), "eve.json")
	must(t, os.WriteFile(eveFile, nil, 0o600))
	ag := agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 5s
  idleTimeout: 30s
  tickInterval: 100ms
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
  l7DetailElements: true
server:
  listen: 127.0.0.1:0
kubernetes:
  enabled: true
  kubeconfig: %s
l7:
  eve:
    source: file
    path: %s
`, nodeA, cl.a.NetnsPath, col.Addr, cl.saKubeconfig, eveFile))

	t.Run("agent runs as the ServiceAccount and its informers listed every object", func(t *testing.T) {
		sa, err := kubeapi.Client(cl.saKubeconfig)
		must(t, err)
		if _, err := sa.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list secrets with the agent's kubeconfig: err = %v, want Forbidden (not an admin identity)", err)
		}
		for _, c := range []struct {
			resource string
			min      float64
		}{
			{"pod", 3}, {"node", 2}, {"replicaset", 1}, {"service", 2}, {"endpointslice", 1}, {"namespace", 3},
		} {
			series := fmt.Sprintf(`flowlens_k8smeta_informer_events_total{op="add",resource=%q}`, c.resource)
			if v, ok := ag.Metric(t, series); !ok || v < c.min {
				t.Errorf("%s = %v (present %v), want >= %v", series, v, ok, c.min)
			}
		}
		if v, _ := ag.Metric(t, "flowlens_k8smeta_cluster_ips"); v < 1 {
			t.Errorf("flowlens_k8smeta_cluster_ips = %v, want the web Service's ClusterIP indexed", v)
		}
	})

	client, web := cl.pod("client"), cl.pod("web")
	t.Run("ClusterIP flow between two pods of this node is intra-node with pods, service and labels", func(t *testing.T) {
		xfer, err := netnstest.SendExactly(client, cl.svc.Addr(), 4000, 1000)
		must(t, err)
		a := waitEndOfFlow(t, col, xfer.Local, 10*time.Second)
		if got, want := a.Rec.Tuple.Dst(), web.IPv4; got != want || a.Rec.Tuple.DstPort != webTarget {
			t.Errorf("destination %s:%d, want the endpoint %s:%d", got, a.Rec.Tuple.DstPort, want, webTarget)
		}
		checkStrings(t, a, map[string]string{
			"sourcePodName":              "client",
			"sourcePodNamespace":         "shop",
			"sourceNodeName":             nodeA,
			"destinationPodName":         "web",
			"destinationPodNamespace":    "shop",
			"destinationNodeName":        nodeA,
			"destinationServicePortName": "shop/web:http",
			// web's ReplicaSet is owned by Deployment web; client is bare.
			"destinationPodWorkloadKind": "Deployment",
			"destinationPodWorkloadName": "web",
			"sourcePodWorkloadKind":      "",
			"sourcePodWorkloadName":      "",
		})
		checkLabels(t, a, "sourcePodLabels", clientLabels)
		checkLabels(t, a, "destinationPodLabels", webLabels)
		if f, ok := a.Raw.Get("destinationClusterIPv4"); !ok || f.Addr != netip.MustParseAddr(webVIP) {
			t.Errorf("destinationClusterIPv4 = %v (present %v), want the VIP %s", f, ok, webVIP)
		}
		if f, ok := a.Raw.Get("destinationServicePort"); !ok || f.Uint != webPort {
			t.Errorf("destinationServicePort = %v (present %v), want %d", f, ok, webPort)
		}
		checkFlowType(t, a, flow.FlowTypeIntraNode)
		if !a.Rec.ClusterIP || a.Rec.OrigDst() != netip.MustParseAddr(webVIP) {
			t.Errorf("decoded record: ClusterIP %v, orig dst %s; want true, %s", a.Rec.ClusterIP, a.Rec.OrigDst(), webVIP)
		}
	})

	t.Run("flow to a pod on another node is inter-node and names that node", func(t *testing.T) {
		db := cl.pod("db")
		xfer, err := netnstest.SendExactly(client, db.Addr(dbPort), 1000, 500)
		must(t, err)
		a := waitEndOfFlow(t, col, xfer.Local, 10*time.Second)
		checkStrings(t, a, map[string]string{
			"sourcePodName":              "client",
			"sourceNodeName":             nodeA,
			"destinationPodName":         "db",
			"destinationPodNamespace":    "store",
			"destinationNodeName":        nodeB,
			"destinationServicePortName": "",
		})
		checkLabels(t, a, "destinationPodLabels", dbLabels)
		if f, ok := a.Raw.Get("destinationClusterIPv4"); !ok || !f.Addr.IsUnspecified() {
			t.Errorf("destinationClusterIPv4 = %v (present %v), want 0.0.0.0 for a direct pod flow", f, ok)
		}
		checkFlowType(t, a, flow.FlowTypeInterNode)
	})

	outside := cl.pod("outside")
	t.Run("flow to an address no Pod or Node object has is to-external", func(t *testing.T) {
		xfer, err := netnstest.SendExactly(client, outside.Addr(outsidePort), 1000, 500)
		must(t, err)
		a := waitEndOfFlow(t, col, xfer.Local, 10*time.Second)
		checkStrings(t, a, map[string]string{
			"sourcePodName":           "client",
			"sourcePodNamespace":      "shop",
			"sourceNodeName":          nodeA,
			"destinationPodName":      "",
			"destinationPodNamespace": "",
			"destinationNodeName":     "",
		})
		checkFlowType(t, a, flow.FlowTypeToExternal)
	})

	t.Run("flow from an address outside the cluster to a pod is from-external", func(t *testing.T) {
		xfer, err := netnstest.SendExactly(outside, web.Addr(webTarget), 1000, 500)
		must(t, err)
		a := waitEndOfFlow(t, col, xfer.Local, 10*time.Second)
		checkStrings(t, a, map[string]string{
			"sourcePodName":           "",
			"sourceNodeName":          "",
			"destinationPodName":      "web",
			"destinationPodNamespace": "shop",
			"destinationNodeName":     nodeA,
		})
		checkFlowType(t, a, flow.FlowTypeFromExternal)
	})

	t.Run("l7-export annotation on the server pod turns L7 export on and off", func(t *testing.T) {
		ev := &eveWriter{path: eveFile}
		steps := []struct {
			name  string
			value string // "" removes the annotation
			want  bool
		}{
			{"not opted in", "", false},
			{"server pod annotated ingress", "ingress", true},
			{"annotation removed", "", false},
		}
		for i, s := range steps {
			if i > 0 {
				before := podUpdates(t, ag)
				must(t, annotatePod(ctx, cl.admin, "shop", "web", s.value))
				// The agent saw the change once its pod informer counted it.
				ag.WaitMetric(t, podUpdatesSeries, 5*time.Second, func(v float64) bool { return v > before })
			}
			a, matched := l7Connection(t, ag, col, ev, client, cl.svc.Addr(), web.Addr(webTarget))
			app, _ := a.Str("appProtocolName")
			vals, _ := a.Str("httpVals")
			if !s.want {
				if matched || app != "" || vals != "" {
					t.Errorf("%s: event matched %v, appProtocolName %q, httpVals %q; want the event dropped as not wanted and no L7 fields", s.name, matched, app, vals)
				}
				continue
			}
			if !matched || app != "http" || !strings.Contains(vals, "/cart") {
				t.Errorf("%s: event matched %v, appProtocolName %q, httpVals %q; want http with the /cart transaction", s.name, matched, app, vals)
			}
			if strings.Contains(vals, "id=42") {
				t.Errorf("%s: httpVals %q keeps the query string; the default privacy drops it", s.name, vals)
			}
		}
	})
}

// setUpCluster starts the control plane, applies the agent's RBAC manifest,
// builds both simulated nodes and creates the API objects that describe them.
func setUpCluster(t *testing.T, ctx context.Context) *cluster {
	t.Helper()
	// Not ctx: the API server must outlive this function's caller until the
	// agent (registered later, so cleaned up first) has stopped.
	c, err := kubeapi.Start(context.Background(), kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		// A missing binary fails the test: CI must have run hack/install-deps.sh.
		t.Fatalf("start etcd + kube-apiserver: %v", err)
	}
	t.Cleanup(c.Stop)
	admin, err := c.AdminClient()
	must(t, err)
	must(t, c.Apply(ctx, filepath.Join(repoRoot(), "build", "rbac", "agent.yaml")))
	saKubeconfig, err := c.ServiceAccountKubeconfig(ctx, "flowlens", "flowlens-agent")
	must(t, err)

	a := netnstest.NewNodeT(t, netnstest.Config{Name: nodeA, Index: 1, Pods: []netnstest.PodSpec{
		{Name: "client", Namespace: "shop"}, {Name: "web", Namespace: "shop"}}})
	b := netnstest.NewNodeT(t, netnstest.Config{Name: nodeB, Index: 2, Pods: []netnstest.PodSpec{
		{Name: "db", Namespace: "store"}, {Name: "outside"}}})
	netnstest.ConnectNodesT(t, a, b)
	web, db, outside := a.Pod("web"), b.Pod("db"), b.Pod("outside")
	for _, l := range []struct {
		p    *netnstest.Pod
		port uint16
	}{{web, webTarget}, {db, dbPort}, {outside, outsidePort}} {
		if _, err := l.p.ListenTCP(l.port); err != nil {
			t.Fatal(err)
		}
	}
	svc := netnstest.AddServiceT(t, a, netnstest.Service{Name: "web", Namespace: "shop",
		VIP: netip.MustParseAddr(webVIP), Port: webPort, Backend: web, TargetPort: webTarget})

	for _, ns := range []string{"shop", "store"} {
		must(t, kubeapi.EnsureNamespace(ctx, admin, ns))
	}
	for _, n := range []*netnstest.Node{a, b} {
		createNode(t, ctx, admin, n.Name, n.NodeIPv4())
	}

	// web belongs to Deployment shop/web through ReplicaSet web-5d8f7.
	replicas := int32(1)
	podTemplate := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: webLabels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "registry.invalid/none:1"}}},
	}
	dep, err := admin.AppsV1().Deployments("shop").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Template: podTemplate},
	}, metav1.CreateOptions{})
	must(t, err)
	rs, err := admin.AppsV1().ReplicaSets("shop").Create(ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d8f7", OwnerReferences: []metav1.OwnerReference{controllerRef("apps/v1", "Deployment", dep.Name, dep.UID)}},
		Spec: appsv1.ReplicaSetSpec{Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: webLabels}, Template: podTemplate},
	}, metav1.CreateOptions{})
	must(t, err)
	rsRef := controllerRef("apps/v1", "ReplicaSet", rs.Name, rs.UID)
	_, err = kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{Namespace: "shop", Name: "client", Node: nodeA,
		IPs: []string{a.Pod("client").IPv4.String()}, Labels: clientLabels})
	must(t, err)
	webPod, err := kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{Namespace: "shop", Name: "web", Node: nodeA,
		IPs: []string{web.IPv4.String()}, Labels: webLabels, Owner: &rsRef})
	must(t, err)
	_, err = kubeapi.CreateRunningPod(ctx, admin, kubeapi.RunningPod{Namespace: "store", Name: "db", Node: nodeB,
		IPs: []string{db.IPv4.String()}, Labels: dbLabels})
	must(t, err)

	_, err = admin.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			ClusterIP: webVIP,
			Selector:  map[string]string{"app": "web"},
			Ports:     []corev1.ServicePort{{Name: "http", Port: webPort, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	must(t, err)
	portName, port, proto, node := "http", int32(webTarget), corev1.ProtocolTCP, nodeA
	_, err = admin.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-x7k2p", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{web.IPv4.String()}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "web", UID: webPod.UID},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{})
	must(t, err)

	return &cluster{admin: admin, saKubeconfig: saKubeconfig, a: a, b: b, svc: svc}
}

func controllerRef(apiVersion, kind, name string, uid types.UID) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: &yes, BlockOwnerDeletion: &yes}
}

// createNode creates a Node whose InternalIP is the simulated node's address;
// addresses live in status, which only the status subresource sets.
func createNode(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string, ip netip.Addr) {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	must(t, err)
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}}
	_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	must(t, err)
}

func annotatePod(ctx context.Context, cs kubernetes.Interface, ns, name, v string) error {
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if v == "" {
		delete(p.Annotations, ipindex.L7Annotation)
	} else {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[ipindex.L7Annotation] = v
	}
	_, err = cs.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
	return err
}

const podUpdatesSeries = `flowlens_k8smeta_informer_events_total{op="update",resource="pod"}`

func podUpdates(t *testing.T, ag *agenttest.Agent) float64 {
	t.Helper()
	v, _ := ag.Metric(t, podUpdatesSeries)
	return v
}

// checkStrings compares string IEs of a record by their Antrea names.
func checkStrings(t *testing.T, a agenttest.Arrival, want map[string]string) {
	t.Helper()
	for name, w := range want {
		got, ok := a.Str(name)
		if !ok {
			t.Errorf("record has no %s IE", name)
		} else if got != w {
			t.Errorf("%s = %q, want %q", name, got, w)
		}
	}
}

// checkLabels compares a labels IE, a JSON object, with the pod's labels.
func checkLabels(t *testing.T, a agenttest.Arrival, ie string, want map[string]string) {
	t.Helper()
	s, ok := a.Str(ie)
	if !ok {
		t.Errorf("record has no %s IE", ie)
		return
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(s), &got); err != nil {
		t.Errorf("%s = %q: not a JSON object of strings: %v", ie, s, err)
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %s, want %v", ie, s, want)
	}
}

func checkFlowType(t *testing.T, a agenttest.Arrival, want flow.FlowType) {
	t.Helper()
	f, ok := a.Raw.Get("flowType")
	if !ok {
		t.Errorf("record has no flowType IE")
		return
	}
	if got := flow.FlowType(f.Uint); got != want {
		t.Errorf("flowType = %s (%d), want %s (%d)", got, f.Uint, want, want)
	}
}

// eveWriter appends Suricata-style EVE records to the file the agent tails.
type eveWriter struct {
	path   string
	flowID uint64
}

// http appends one http event for the connection src -> dst (the
// post-DNAT tuple, as a sensor on the server pod's veth sees it).
func (w *eveWriter) http(t *testing.T, src, dst netip.AddrPort) {
	t.Helper()
	w.flowID++
	line, err := json.Marshal(map[string]any{
		"timestamp":  time.Now().Format("2006-01-02T15:04:05.000000-0700"),
		"flow_id":    1000 + w.flowID,
		"event_type": "http",
		"src_ip":     src.Addr().String(), "src_port": src.Port(),
		"dest_ip": dst.Addr().String(), "dest_port": dst.Port(),
		"proto": "TCP", "tx_id": 0, "app_proto": "http",
		"http": map[string]any{
			"hostname": "web.shop.svc", "url": "/cart?id=42", "http_method": "GET",
			"protocol": "HTTP/1.1", "status": 200, "length": 100,
		},
	})
	must(t, err)
	f, err := os.OpenFile(w.path, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.Write(append(line, '\n'))
	must(t, errors.Join(err, f.Close()))
}

// l7Connection opens a connection from client to the Service, feeds the
// agent an http EVE event for it while it is open, waits until the agent
// either matched the event or dropped it as not wanted, then finishes the
// exchange and returns the end-of-flow record and whether it matched.
func l7Connection(t *testing.T, ag *agenttest.Agent, col *agenttest.Collector, ev *eveWriter, client *netnstest.Pod, svc, endpoint netip.AddrPort) (agenttest.Arrival, bool) {
	t.Helper()
	const matchedSeries = "flowlens_l7_events_matched_total"
	const notWantedSeries = `flowlens_l7_events_dropped_total{reason="not_wanted"}`
	matched0, _ := ag.Metric(t, matchedSeries)
	notWanted0, _ := ag.Metric(t, notWantedSeries)

	c, err := client.DialTCP(svc)
	must(t, err)
	defer c.Close()
	must(t, c.SetDeadline(time.Now().Add(15*time.Second)))
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], 100) // reply length
	_, err = c.Write(append(hdr[:], make([]byte, 200)...))
	must(t, err)

	ev.http(t, local, endpoint)
	var matched bool
	deadline := time.Now().Add(8 * time.Second)
	for {
		m, _ := ag.Metric(t, matchedSeries)
		nw, _ := ag.Metric(t, notWantedSeries)
		if m > matched0 || nw > notWanted0 {
			matched = m > matched0
			if m > matched0 && nw > notWanted0 {
				t.Fatalf("one event both matched and dropped as not wanted")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("EVE event for %s -> %s neither matched nor dropped as not wanted within 8s", local, endpoint)
		}
		time.Sleep(50 * time.Millisecond)
	}

	must(t, c.CloseWrite())
	n, err := io.Copy(io.Discard, c)
	must(t, err)
	if n != 100 {
		t.Fatalf("reply %d bytes, want 100", n)
	}
	must(t, c.Close())
	return waitEndOfFlow(t, col, local, 10*time.Second), matched
}
