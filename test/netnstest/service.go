package netnstest

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/flowlens/flowlens/pkg/flow"
)

// nftTable is the harness's table in the node namespace. Its ct rule is
// what makes the kernel track connections in the namespace at all; the nat
// chains hold one DNAT rule per Service port, like kube-proxy's.
const nftTable = "flowlens-test"

const baseRuleset = `table inet ` + nftTable + ` {
	chain conntrack {
		type filter hook prerouting priority -150; policy accept;
		ct state new counter
	}
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain services-local {
		type nat hook output priority -100; policy accept;
	}
}
`

// Service is a ClusterIP-style Service with one backend pod.
type Service struct {
	// Name and Namespace are Kubernetes metadata for enrichment tests;
	// default "svc-<n>" and the backend's namespace.
	Name      string
	Namespace string
	// VIP is the ClusterIP; zero allocates the next one from the node's
	// range (IPv6 one when IPv6 is set).
	VIP  netip.Addr
	IPv6 bool
	Port uint16
	// Proto is flow.ProtoTCP (the default) or flow.ProtoUDP.
	Proto      uint8
	Backend    *Pod
	TargetPort uint16 // default Port
}

// Addr is the address clients dial: VIP:Port.
func (s Service) Addr() netip.AddrPort { return netip.AddrPortFrom(s.VIP, s.Port) }

// Endpoint is where the node sends the connection: backend address:TargetPort
// in the VIP's family.
func (s Service) Endpoint() netip.AddrPort {
	if s.VIP.Is6() {
		return s.Backend.Addr6(s.TargetPort)
	}
	return s.Backend.Addr(s.TargetPort)
}

// AddService installs the DNAT rule for svc in the node namespace (for
// traffic from pods and from the node itself) and returns svc with its
// defaults filled in. A pod dialling its own Service is not supported (that
// needs hairpin masquerade).
func (n *Node) AddService(svc Service) (Service, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return Service{}, fmt.Errorf("add service: node %s is closed", n.Name)
	}
	svc, err := n.completeService(svc)
	if err != nil {
		return Service{}, fmt.Errorf("add service %s: %w", svc.Name, err)
	}
	if _, err := runInNetns(n.NetnsName, dnatRules(svc), "nft", "-f", "-"); err != nil {
		return Service{}, fmt.Errorf("add service %s: %w", svc.Name, err)
	}
	n.services = append(n.services, svc)
	return svc, nil
}

// Services returns the Services added so far.
func (n *Node) Services() []Service {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Service(nil), n.services...)
}

// completeService fills defaults and checks svc; n.mu is held.
func (n *Node) completeService(svc Service) (Service, error) {
	if svc.Name == "" {
		svc.Name = fmt.Sprintf("svc-%d", len(n.services))
	}
	if svc.Backend == nil {
		return svc, fmt.Errorf("no backend pod")
	}
	if svc.Namespace == "" {
		svc.Namespace = svc.Backend.Namespace
	}
	if svc.Proto == 0 {
		svc.Proto = flow.ProtoTCP
	}
	if svc.Proto != flow.ProtoTCP && svc.Proto != flow.ProtoUDP {
		return svc, fmt.Errorf("protocol %s: want tcp or udp", flow.ProtoName(svc.Proto))
	}
	if svc.Port == 0 {
		return svc, fmt.Errorf("no port")
	}
	if svc.TargetPort == 0 {
		svc.TargetPort = svc.Port
	}
	if !svc.VIP.IsValid() {
		var err error
		if svc.IPv6 {
			svc.VIP, err = serviceIPv6(n.Index, len(n.services))
		} else {
			svc.VIP, err = serviceIPv4(n.Index, len(n.services))
		}
		if err != nil {
			return svc, err
		}
	}
	svc.VIP = svc.VIP.Unmap()
	svc.IPv6 = svc.VIP.Is6()
	if svc.IPv6 && !svc.Backend.IPv6.IsValid() {
		return svc, fmt.Errorf("IPv6 VIP %s but backend %s has no IPv6 address (Config.IPv6)", svc.VIP, svc.Backend)
	}
	return svc, nil
}

// dnatRules renders the nft commands that send svc's VIP:Port to its endpoint.
func dnatRules(svc Service) string {
	family := "ip"
	if svc.IPv6 {
		family = "ip6"
	}
	ep := svc.Endpoint()
	match := fmt.Sprintf("%s daddr %s %s dport %d dnat %s to %s",
		family, svc.VIP, flow.ProtoName(svc.Proto), svc.Port, family, ep)
	var b strings.Builder
	for _, chain := range []string{"services", "services-local"} {
		fmt.Fprintf(&b, "add rule inet %s %s %s comment %q\n", nftTable, chain, match, svc.Namespace+"/"+svc.Name)
	}
	return b.String()
}
