package netnstest

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// NodeIPv4 is the node's address on links to other nodes (ConnectNodes).
func (n *Node) NodeIPv4() netip.Addr { return nodeIPv4(n.Index) }

// NodeIPv6 is the node's IPv6 address on links to other nodes (dual-stack only).
func (n *Node) NodeIPv6() netip.Addr {
	if !n.IPv6 {
		return netip.Addr{}
	}
	return nodeIPv6(n.Index)
}

// ConnectNodes joins two nodes with a veth and routes each one's pod range
// to the other, the way a flat (non-overlay) cluster network does, so pods
// on a reach pods on b directly and inter-node flows show up in both nodes'
// conntrack tables. Services stay per node: a pod on a reaches a Service
// only if it was added to a (kube-proxy installs every Service on every
// node; call AddService on each). A node may be connected to several others.
func ConnectNodes(a, b *Node) error {
	if a.Index == b.Index {
		return fmt.Errorf("connect nodes %s and %s: both have index %d, so their pod ranges overlap", a.Name, b.Name, a.Index)
	}
	aIf, bIf := fmt.Sprintf("flnode%d", b.Index), fmt.Sprintf("flnode%d", a.Index)
	bNs, err := vnetns.GetFromPath(b.NetnsPath)
	if err != nil {
		return fmt.Errorf("connect nodes: open netns %s: %w", b.NetnsPath, err)
	}
	defer bNs.Close()
	err = withHandle(a.NetnsPath, func(h *netlink.Handle) error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: aIf},
			PeerName:      bIf,
			PeerNamespace: netlink.NsFd(int(bNs)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", aIf, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := routeToPeer(a, aIf, b); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := routeToPeer(b, bIf, a); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := waitOperUp(a.NetnsPath, aIf); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := waitOperUp(b.NetnsPath, bIf); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if !a.IPv6 || !b.IPv6 {
		return nil
	}
	if err := waitNDReady(a.NetnsPath, aIf, a.NodeIPv6()); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := waitNDReady(b.NetnsPath, bIf, b.NodeIPv6()); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	return nil
}

// routeToPeer configures self's end of a node link: self's node address
// (/32, /128: the same address can sit on several links), a host route to
// the peer's node address and the peer's pod ranges via it.
func routeToPeer(self *Node, ifName string, peer *Node) error {
	dual := self.IPv6 && peer.IPv6
	return withHandle(self.NetnsPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", ifName, self.Name, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in %s: %w", ifName, self.Name, err)
		}
		idx := link.Attrs().Index
		type hop struct {
			local, peer netip.Addr
			podCIDR     netip.Prefix
		}
		hops := []hop{{self.NodeIPv4(), peer.NodeIPv4(), peer.PodCIDRv4}}
		if dual {
			hops = append(hops, hop{self.NodeIPv6(), peer.NodeIPv6(), peer.PodCIDRv6})
		}
		for _, hp := range hops {
			if err := h.AddrAdd(link, hostAddr(hp.local)); err != nil {
				return fmt.Errorf("add %s to %s in %s: %w", hp.local, ifName, self.Name, err)
			}
			if err := h.RouteAdd(linkRoute(idx, hp.peer)); err != nil {
				return fmt.Errorf("route %s in %s: %w", hp.peer, self.Name, err)
			}
			r := &netlink.Route{LinkIndex: idx, Dst: ipNet(hp.podCIDR), Gw: hp.peer.AsSlice()}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("route %s via %s in %s: %w", hp.podCIDR, hp.peer, self.Name, err)
			}
		}
		return nil
	})
}
