package k8smeta

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flowlens/flowlens/pkg/flow"
)

func withPodCIDRs(n *corev1.Node, cidrs ...string) *corev1.Node {
	n.Spec.PodCIDRs = cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	return n
}

func withAnnotations(n *corev1.Node, kv ...string) *corev1.Node {
	n.Annotations = pairs(kv)
	return n
}

// source resolves a connection from addr to the local pod web and returns
// the source end and flow type the agent on node-a would export.
func (e *env) source(addr string) (flow.Endpoint, flow.FlowType) {
	r := flow.Record{Conn: conn(addr, "10.244.0.3", 40001, 8080, sec(1))}
	e.meta.Enrich(&r)
	return r.Source, r.FlowType
}

// The address kube-proxy's masquerade picks on an overlay is one the
// node's object tells (pod CIDR, CNI annotation); the agent on the backend
// node must map it to the entry node, so the connection is inter-node and
// its half waits for the entry node's in the aggregator.
func TestNodeTunnelAndGatewayAddressesMapToTheNode(t *testing.T) {
	legacy := node("node-legacy", "172.18.0.4")
	legacy.Spec.PodCIDR = "10.244.4.0/24" // spec.podCIDRs unset (old API server)
	e := start(t, false,
		node("node-a", "172.18.0.2"),
		pod("shop", "web", "10.244.0.3"),
		withPodCIDRs(node("node-flannel", "172.18.0.3"), "10.244.1.0/24", "fd00:10:244:1::/64"),
		legacy,
		withAnnotations(node("node-calico-ipip", "172.18.0.5"),
			"projectcalico.org/IPv4Address", "172.19.0.5/16",
			"projectcalico.org/IPv4IPIPTunnelAddr", "192.168.77.64"),
		withAnnotations(node("node-calico-vxlan", "172.18.0.6"),
			"projectcalico.org/IPv4VXLANTunnelAddr", "192.168.78.0",
			"projectcalico.org/IPv6VXLANTunnelAddrV6", "fd00:78::1"),
		withAnnotations(node("node-flannel-pub", "172.18.0.7"),
			"flannel.alpha.coreos.com/public-ip", "172.20.0.7"),
		withAnnotations(node("node-cilium", "172.18.0.8"),
			"network.cilium.io/ipv4-cilium-host", "10.0.8.163"),
		// A pod holds its CIDR's first address (an IPAM without a gateway):
		// the pod keeps its address.
		withPodCIDRs(node("node-pod-first", "172.18.0.9"), "10.244.9.0/24"),
		pod("shop", "first", "10.244.9.1", onNode("node-pod-first")),
	)
	for _, tc := range []struct{ name, addr, node string }{
		{"InternalIP", "172.18.0.3", "node-flannel"},
		{"flannel VXLAN VTEP: pod CIDR network address", "10.244.1.0", "node-flannel"},
		{"gateway: pod CIDR first address", "10.244.1.1", "node-flannel"},
		{"IPv6 pod CIDR network address", "fd00:10:244:1::", "node-flannel"},
		{"IPv6 pod CIDR gateway", "fd00:10:244:1::1", "node-flannel"},
		{"legacy spec.podCIDR VTEP", "10.244.4.0", "node-legacy"},
		{"legacy spec.podCIDR gateway", "10.244.4.1", "node-legacy"},
		{"Calico IPIP tunnel", "192.168.77.64", "node-calico-ipip"},
		{"Calico node address in CIDR notation", "172.19.0.5", "node-calico-ipip"},
		{"Calico VXLAN tunnel", "192.168.78.0", "node-calico-vxlan"},
		{"Calico IPv6 VXLAN tunnel", "fd00:78::1", "node-calico-vxlan"},
		{"flannel public-ip other than the InternalIP", "172.20.0.7", "node-flannel-pub"},
		{"Cilium host address", "10.0.8.163", "node-cilium"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, ft := e.source(tc.addr)
			if src != (flow.Endpoint{NodeName: tc.node}) || ft != flow.FlowTypeInterNode {
				t.Errorf("source %s: %+v %v, want node %s, inter-node", tc.addr, src, ft, tc.node)
			}
		})
	}
	for _, tc := range []struct{ name, addr string }{
		{"another address of a pod CIDR", "10.244.1.2"},
		{"an address outside every pod CIDR", "10.245.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if src, ft := e.source(tc.addr); src != (flow.Endpoint{}) || ft != flow.FlowTypeFromExternal {
				t.Errorf("source %s: %+v %v, want external", tc.addr, src, ft)
			}
		})
	}
	if src, _ := e.source("10.244.9.1"); src.PodName != "first" {
		t.Errorf("10.244.9.1 resolves to %+v, want the pod that holds it", src)
	}
}

// Addresses follow the node object: an annotation removed on update stops
// mapping, one added starts; an unparsable value is counted and skipped
// without losing the node's other addresses.
func TestNodeAddressAnnotationsFollowUpdates(t *testing.T) {
	e := start(t, false, node("node-a", "172.18.0.2"), pod("shop", "web", "10.244.0.3"),
		withAnnotations(node("node-b", "172.18.0.3"),
			"projectcalico.org/IPv4VXLANTunnelAddr", "192.168.5.0",
			"projectcalico.org/IPv4IPIPTunnelAddr", "not-an-address"))
	bad := func() float64 {
		var m dto.Metric
		if err := e.meta.metrics.badAddresses.WithLabelValues("node").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	if got := bad(); got != 1 {
		t.Errorf("%v unparsable node addresses counted, want 1", got)
	}
	if src, _ := e.source("192.168.5.0"); src.NodeName != "node-b" {
		t.Errorf("VXLAN tunnel address: %+v, want node-b", src)
	}
	if src, _ := e.source("172.18.0.3"); src.NodeName != "node-b" {
		t.Errorf("InternalIP beside an unparsable annotation: %+v, want node-b", src)
	}
	n := withAnnotations(node("node-b", "172.18.0.3"), "projectcalico.org/IPv4IPIPTunnelAddr", "192.168.6.0")
	if _, err := e.client.CoreV1().Nodes().Update(e.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "tunnel address changed", func() (string, bool) {
		newSrc, _ := e.source("192.168.6.0")
		oldSrc, _ := e.source("192.168.5.0")
		return newSrc.NodeName + "/" + oldSrc.NodeName, newSrc.NodeName == "node-b" && oldSrc.NodeName == ""
	})
}

// The node transform keeps the pod CIDRs and the address annotations, and
// drops every other annotation.
func TestNodeTransformKeepsOtherAddresses(t *testing.T) {
	n := withPodCIDRs(withAnnotations(node("n", "172.18.0.2"),
		"projectcalico.org/IPv4IPIPTunnelAddr", "192.168.1.0",
		"node.alpha.kubernetes.io/ttl", "0"), "10.244.1.0/24")
	n.Spec.ProviderID = "kind://n"
	g := transformNode(n)
	if g.Spec.PodCIDR != "10.244.1.0/24" || len(g.Spec.PodCIDRs) != 1 || g.Spec.ProviderID != "" {
		t.Errorf("spec %+v, want only the pod CIDRs", g.Spec)
	}
	if len(g.Annotations) != 1 || g.Annotations["projectcalico.org/IPv4IPIPTunnelAddr"] != "192.168.1.0" {
		t.Errorf("annotations %v, want only the tunnel address", g.Annotations)
	}
}
