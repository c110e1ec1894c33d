package podlinks

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// HostLink finds the host interface behind which the pod with address ip
// lives, in the namespace at netnsPath (empty: the agent's own): the
// interface of the host route to ip (routed pods), or, when that route
// points at a bridge, the bridge port whose forwarding entry holds the MAC
// the bridge's neighbour table has for ip (bridged pods). An unresolved
// neighbour is an error: the caller retries once the pod has talked.
func HostLink(netnsPath string, ip netip.Addr) (ifindex int, name string, err error) {
	ns, err := openNetns(netnsPath)
	if err != nil {
		return 0, "", err
	}
	defer ns.Close()
	h, err := routeHandle(netnsPath, ns)
	if err != nil {
		return 0, "", fmt.Errorf("netlink handle in netns %q: %w", netnsPath, err)
	}
	defer h.Close()
	ip = ip.Unmap()
	routes, err := h.RouteGet(net.IP(ip.AsSlice()))
	if err != nil || len(routes) == 0 {
		return 0, "", fmt.Errorf("route to %s in netns %q: %w", ip, netnsPath, err)
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return 0, "", fmt.Errorf("link %d of route to %s: %w", routes[0].LinkIndex, ip, err)
	}
	if l.Type() != "bridge" {
		return l.Attrs().Index, l.Attrs().Name, nil
	}
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	neighs, err := h.NeighList(l.Attrs().Index, family)
	if err != nil {
		return 0, "", fmt.Errorf("neighbours of bridge %s: %w", l.Attrs().Name, err)
	}
	var mac net.HardwareAddr
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip && len(n.HardwareAddr) > 0 {
			mac = n.HardwareAddr
			break
		}
	}
	if mac == nil {
		return 0, "", fmt.Errorf("no neighbour entry for %s on bridge %s", ip, l.Attrs().Name)
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return 0, "", fmt.Errorf("forwarding table of bridge %s: %w", l.Attrs().Name, err)
	}
	for _, n := range fdb {
		if n.MasterIndex == l.Attrs().Index && bytes.Equal(n.HardwareAddr, mac) && n.LinkIndex != l.Attrs().Index {
			port, err := h.LinkByIndex(n.LinkIndex)
			if err != nil {
				return 0, "", fmt.Errorf("bridge port %d: %w", n.LinkIndex, err)
			}
			return port.Attrs().Index, port.Attrs().Name, nil
		}
	}
	return 0, "", fmt.Errorf("no bridge %s port has learnt %s (%s)", l.Attrs().Name, mac, ip)
}
