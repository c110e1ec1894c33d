package mirror

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/podlinks"
)

// target is a pod interface to mirror and the wanted addresses behind it.
type target struct {
	name  string
	addrs []netip.Addr
}

// resolve maps the wanted addresses to their pod interfaces. An address
// that cannot be resolved now keeps the interface it was mirrored on while
// that interface exists, so a transient lookup failure does not interrupt
// a mirror.
func (m *Mirror) resolve(want []netip.Addr) map[int]*target {
	desired := map[int]*target{}
	add := func(idx int, name string, a netip.Addr) {
		t := desired[idx]
		if t == nil {
			t = &target{name: name}
			desired[idx] = t
		}
		t.addrs = append(t.addrs, a)
	}
	stillMissing := map[netip.Addr]bool{}
	for _, a := range want {
		a = a.Unmap()
		idx, name, err := m.hostLink(a)
		if err == nil {
			add(idx, name, a)
			if m.missing[a] {
				klog.InfoS("Found the interface of a pod to mirror", "ip", a, "interface", name)
			}
			continue
		}
		stillMissing[a] = true
		if !m.missing[a] {
			m.metrics.unresolved.Inc()
			klog.InfoS("Cannot find the interface of a pod to mirror; its traffic reaches no sensor until it is found", "ip", a, "err", err)
		}
	}
	for idx, mi := range m.ifs {
		for _, a := range mi.addrs {
			if !stillMissing[a] {
				continue
			}
			if l, err := m.h.LinkByIndex(idx); err == nil && l.Attrs().Name == mi.name {
				add(idx, mi.name, a)
			}
		}
	}
	m.missing = stillMissing
	m.metrics.missing.Set(float64(len(stillMissing)))
	return desired
}

// hostLink finds a's pod interface and checks that it is one: a veth
// whose peer is in another namespace. When a bridged pod's neighbour entry
// is missing it asks the kernel to resolve it, for the next attempt.
func (m *Mirror) hostLink(a netip.Addr) (int, string, error) {
	idx, name, err := podlinks.HostLink(m.cfg.NetnsPath, a)
	if err != nil {
		m.probeNeighbour(a)
		return 0, "", err
	}
	l, err := m.h.LinkByIndex(idx)
	if err != nil {
		return 0, "", fmt.Errorf("link %s: %w", name, err)
	}
	at := l.Attrs()
	if at.Name == m.cfg.CaptureName || at.Name == m.cfg.PeerName || l.Type() != "veth" || at.NetNsID < 0 {
		return 0, "", fmt.Errorf("%s resolves to %s (type %s), not the host end of a pod's veth: is it a local pod?", a, at.Name, l.Type())
	}
	return idx, name, nil
}

// probeNeighbour starts neighbour resolution of a on the bridge its route
// points at (NTF_USE: the kernel sends an ARP request or neighbour
// solicitation, as if a packet were waiting), so the bridge learns the
// pod's MAC without us sending it any traffic. Best effort.
func (m *Mirror) probeNeighbour(a netip.Addr) {
	routes, err := m.h.RouteGet(net.IP(a.AsSlice()))
	if err != nil || len(routes) == 0 {
		return
	}
	l, err := m.h.LinkByIndex(routes[0].LinkIndex)
	if err != nil || l.Type() != "bridge" {
		return
	}
	family := unix.AF_INET
	if a.Is6() {
		family = unix.AF_INET6
	}
	err = m.h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: family, IP: net.IP(a.AsSlice()), Flags: netlink.NTF_USE})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		klog.V(2).InfoS("Neighbour probe failed", "ip", a, "bridge", l.Attrs().Name, "err", err)
	}
}

// scan runs before the first changes, and again at each Reconcile until
// it succeeds once: it walks the namespace's interfaces for artifacts of
// ours. Filters mirroring to the current capture veth on an interface
// that stays mirrored with tc are adopted; the filters and TCX links this
// instance installed are left alone (a retried scan runs after installs);
// every other filter or TCX link of ours is removed.
func (m *Mirror) scan(desired map[int]*target) (removed int, err error) {
	links, err := m.h.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list interfaces: %w", err)
	}
	keep := m.ourLinkIDs()
	var errs []error
	adopted := 0
	for _, l := range links {
		a := l.Attrs()
		if a.Name == m.cfg.CaptureName || a.Name == m.cfg.PeerName {
			continue
		}
		n, err := m.detachStaleTCX(a.Index, keep)
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
		}
		st, err := m.listTC(a.Index)
		if err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
			}
			continue
		}
		found := len(st.ours[0]) + len(st.ours[1])
		if found == 0 {
			continue
		}
		if mi := m.ifs[a.Index]; mi != nil && mi.tc && mi.name == a.Name {
			// This run's own (installed while an earlier scan failed, or
			// adopted by it): never stale. Reconcile checks them.
			continue
		}
		tg, want := desired[a.Index]
		if m.mech == MechanismTC && want && tg.name == a.Name && m.ifs[a.Index] == nil && exactlyOurMirror(st, m.capIdx) {
			// Nothing else on the qdisc: it was ours, or is now useless.
			m.ifs[a.Index] = &mirrored{ifindex: a.Index, name: a.Name, addrs: tg.addrs, tc: true, ownQdisc: st.foreign == 0, ok: true}
			adopted++
			continue
		}
		if err := m.uninstallTC(a.Index, st.foreign == 0); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
			continue
		}
		removed += found
	}
	if removed > 0 || adopted > 0 {
		klog.InfoS("Converged mirrors left by a previous run", "adopted", adopted, "removed", removed)
	}
	m.metrics.staleRemoved.Add(float64(removed))
	return removed, errors.Join(errs...)
}

// exactlyOurMirror: one filter of ours per hook, mirroring to capIdx.
func exactlyOurMirror(st tcState, capIdx int) bool {
	for i := range hooks {
		if len(st.targets[i]) != 1 || st.targets[i][0] != capIdx {
			return false
		}
	}
	return true
}
