package mirror

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/netns"
)

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h): the
// kernel makes no IPv6 address for the link, not even a link-local one.
const addrGenModeNone = 1

// ensureCapture creates the capture veth pair, or checks that the existing
// one is ours and set up, and points the program at it. An interface of
// that name that is not ours is an error: it is never touched.
func (m *Mirror) ensureCapture() error {
	capName, peerName := m.cfg.CaptureName, m.cfg.PeerName
	c, err := m.h.LinkByName(capName)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		if p, err := m.h.LinkByName(peerName); err == nil {
			if p.Attrs().Alias != CaptureAlias {
				return fmt.Errorf("capture peer %s exists and is not flowlens's (alias %q)", peerName, p.Attrs().Alias)
			}
			// Half of an old pair of ours (its peer was renamed): remove it.
			if err := m.h.LinkDel(p); err != nil && !gone(err) {
				return fmt.Errorf("delete stale capture peer %s: %w", peerName, err)
			}
		}
		if c, err = m.createCapture(); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("find capture interface %s: %w", capName, err)
	default:
		if c.Type() != "veth" || c.Attrs().Alias != CaptureAlias {
			return fmt.Errorf("capture interface %s exists and is not flowlens's (type %s, alias %q)", capName, c.Type(), c.Attrs().Alias)
		}
		if c, err = m.replaceMismatchedPair(c); err != nil {
			return err
		}
	}
	p, err := m.h.LinkByName(peerName)
	if err != nil {
		return fmt.Errorf("find capture peer %s: %w", peerName, err)
	}
	if p.Attrs().Alias != CaptureAlias || p.Attrs().ParentIndex != c.Attrs().Index {
		return fmt.Errorf("capture peer %s is not the peer of %s (alias %q)", peerName, capName, p.Attrs().Alias)
	}
	for _, l := range []netlink.Link{c, p} {
		if l.Attrs().MTU != captureMTU {
			if err := m.h.LinkSetMTU(l, captureMTU); err != nil {
				return fmt.Errorf("set MTU of %s: %w", l.Attrs().Name, err)
			}
		}
		if l.Attrs().Flags&unix.IFF_UP == 0 {
			if err := m.h.LinkSetUp(l); err != nil {
				return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
			}
		}
	}
	if err := m.dropOnPeer(p.Attrs().Index); err != nil {
		return err
	}
	if m.capIdx != c.Attrs().Index {
		klog.V(2).InfoS("Capture interface", "name", capName, "ifindex", c.Attrs().Index, "peer", peerName)
	}
	m.capIdx = c.Attrs().Index
	if m.objs != nil {
		if err := m.objs.Target.Put(uint32(0), uint32(m.capIdx)); err != nil {
			return fmt.Errorf("set mirror target: %w", err)
		}
	}
	return nil
}

// replaceMismatchedPair checks that c, our capture interface, is paired
// with the configured peer. When its peer has another name (a previous
// run configured another peer interface and was killed), the whole old
// pair is ours: it is deleted and a new one created. A configured peer
// name held by an interface that is not ours is an error: never touched.
func (m *Mirror) replaceMismatchedPair(c netlink.Link) (netlink.Link, error) {
	peerName := m.cfg.PeerName
	p, err := m.h.LinkByName(peerName)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil && p.Attrs().ParentIndex == c.Attrs().Index && p.Attrs().Alias == CaptureAlias:
		return c, nil
	case err == nil && p.Attrs().Alias != CaptureAlias:
		return nil, fmt.Errorf("capture peer %s exists and is not flowlens's (alias %q)", peerName, p.Attrs().Alias)
	case err == nil:
		// Ours, of another old pair: goes too.
		if err := m.h.LinkDel(p); err != nil && !gone(err) {
			return nil, fmt.Errorf("delete stale capture interface %s: %w", peerName, err)
		}
	case !errors.As(err, &nf):
		return nil, fmt.Errorf("find capture peer %s: %w", peerName, err)
	}
	klog.InfoS("Replacing the capture veth pair left by a previous run with another peer", "capture", m.cfg.CaptureName, "peer", peerName)
	if err := m.h.LinkDel(c); err != nil && !gone(err) {
		return nil, fmt.Errorf("delete stale capture veth %s: %w", m.cfg.CaptureName, err)
	}
	return m.createCapture()
}

func (m *Mirror) createCapture() (netlink.Link, error) {
	capName, peerName := m.cfg.CaptureName, m.cfg.PeerName
	v := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: capName, MTU: captureMTU},
		PeerName:  peerName,
		PeerMTU:   captureMTU,
	}
	if err := m.h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("create capture veth %s/%s: %w", capName, peerName, err)
	}
	klog.InfoS("Created capture veth pair", "capture", capName, "peer", peerName, "netns", m.cfg.NetnsPath)
	for _, n := range []string{capName, peerName} {
		l, err := m.h.LinkByName(n)
		if err == nil {
			err = m.h.LinkSetAlias(l, CaptureAlias)
		}
		if err != nil {
			_ = m.h.LinkDel(v)
			return nil, fmt.Errorf("mark capture interface %s: %w", n, err)
		}
		// No addresses, router solicitations or MLD reports of its own in
		// the capture. Through netlink, while the link is still down so no
		// link-local address is ever made: a container's /proc/sys is
		// read-only. The sysctl then stops the rest where it can. Both
		// fail on a node with IPv6 off: nothing to do there.
		if err := m.h.LinkSetIP6AddrGenMode(l, addrGenModeNone); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
			klog.InfoS("Cannot turn off IPv6 address generation on the capture interface", "name", n, "err", err)
		}
		if err := netns.WriteSysctl(m.cfg.NetnsPath, "net.ipv6.conf."+n+".disable_ipv6", "1"); err != nil && !errors.Is(err, unix.ENOENT) {
			klog.V(2).InfoS("Cannot disable IPv6 on the capture interface", "name", n, "err", err)
		}
	}
	return m.h.LinkByName(capName)
}

// dropOnPeer installs (or replaces) the drop program on the peer's tc
// ingress: the copies stop there, after af-packet saw them. Without the
// program (no eBPF) there is no drop; New has said so.
func (m *Mirror) dropOnPeer(ifindex int) error {
	if m.objs == nil {
		return nil
	}
	if err := m.addClsact(ifindex); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("clsact on capture peer: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1,
			Priority: TCPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: m.objs.FlCapdrop.FD(), Name: "fl_capdrop", DirectAction: true,
	}
	if err := m.h.FilterReplace(f); err != nil {
		return fmt.Errorf("drop filter on capture peer: %w", err)
	}
	return nil
}

func (m *Mirror) deleteCapture() error {
	c, err := m.h.LinkByName(m.cfg.CaptureName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find capture interface: %w", err)
	}
	if c.Attrs().Alias != CaptureAlias {
		return nil
	}
	// Deleting one end of a veth deletes both.
	if err := m.h.LinkDel(c); err != nil && !gone(err) {
		return fmt.Errorf("delete capture veth %s: %w", m.cfg.CaptureName, err)
	}
	klog.InfoS("Deleted capture veth pair", "capture", m.cfg.CaptureName, "peer", m.cfg.PeerName)
	return nil
}
