package k8smeta

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// A node sends from more addresses than its InternalIP and ExternalIP. On
// an overlay, kube-proxy's MASQUERADE of NodePort and LoadBalancer
// traffic (externalTrafficPolicy: Cluster) picks the address of the
// interface the packet leaves by: flannel.1 (the network address of the
// node's pod CIDR), Antrea's or a bridge CNI's gateway (its first
// address), Calico's IPIP or VXLAN tunnel. The backend's node must map that
// source to the entry node: it is then a node end, the connection is
// inter-node and its half waits for the entry node's in the aggregator,
// instead of being a from-external connection of its own (two rows, every
// byte counted twice).
//
// A pod holding one of these addresses still wins: the index resolves pods
// before hosts, so an IPAM that hands out a CIDR's first address to a pod
// keeps naming the pod.

// nodeAddressAnnotation reports whether a node annotation holds an address
// of the node, and which CNI writes it.
func nodeAddressAnnotation(key string) bool {
	switch key {
	case "projectcalico.org/IPv4Address", // CIDR notation: the node's address Calico chose
		"projectcalico.org/IPv6Address",
		"projectcalico.org/IPv4IPIPTunnelAddr",
		"projectcalico.org/IPv4VXLANTunnelAddr",
		"projectcalico.org/IPv6VXLANTunnelAddrV6",
		"projectcalico.org/IPv4WireguardInterfaceAddr",
		"projectcalico.org/IPv6WireguardInterfaceAddr",
		// flannel's public-ip is the address it tunnels from: the
		// InternalIP unless --public-ip or --iface chose another one.
		"flannel.alpha.coreos.com/public-ip",
		"flannel.alpha.coreos.com/public-ip-v6",
		// cilium_host, the address of Cilium's routing interface (both
		// the current and the older key).
		"network.cilium.io/ipv4-cilium-host",
		"network.cilium.io/ipv6-cilium-host",
		"io.cilium.network.ipv4-cilium-host",
		"io.cilium.network.ipv6-cilium-host":
		return true
	}
	return false
}

// nodeAddresses lists every address n sends from that the node object
// tells: status addresses, the CNI's address annotations, and the network
// and first addresses of each pod CIDR. Unparsable values are counted and
// skipped.
func (m *Meta) nodeAddresses(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.IsValid() && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			for _, p := range m.parseAddrs("node", a.Address) {
				add(p)
			}
		}
	}
	for k, v := range n.Annotations {
		if !nodeAddressAnnotation(k) || v == "" {
			continue
		}
		a, err := parseAddrOrPrefix(v)
		if err != nil {
			m.metrics.badAddresses.WithLabelValues("node").Inc()
			klog.V(2).InfoS("Ignoring unparsable node address annotation", "node", n.Name, "annotation", k, "value", v)
			continue
		}
		add(a)
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			m.metrics.badAddresses.WithLabelValues("node").Inc()
			klog.V(2).InfoS("Ignoring unparsable pod CIDR", "node", n.Name, "podCIDR", c)
			continue
		}
		network := p.Masked().Addr()
		add(network) // flannel's VTEP (flannel.1)
		if first := network.Next(); p.Contains(first) {
			add(first) // a gateway: antrea-gw0, cni0, kindnet's ptp host side
		}
	}
	return out
}

// parseAddrOrPrefix accepts "10.0.0.1" and Calico's "10.0.0.1/24".
func parseAddrOrPrefix(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}
