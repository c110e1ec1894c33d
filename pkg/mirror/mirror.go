// Package mirror copies the traffic of opted-in local pods, both
// directions, to a capture veth pair the agent owns, for Suricata to read.
// It needs to know nothing about the CNI.
//
// Finding a pod's interface: the host end of the pod's veth is the
// interface of the node's route to the pod's IP (routed CNIs: Calico, a
// /32 per pod), or, when that route points at a Linux bridge (the bridge
// plugin, Flannel), the bridge port whose forwarding entry holds the MAC
// the bridge's neighbour table has for the IP (podlinks.HostLink). Only a
// veth whose peer lives in another network namespace is accepted: an IP
// that resolves to the node's uplink, a tunnel or lo is refused, so a
// wrong input never mirrors a whole node. An IP that cannot be resolved
// is logged and counted once per episode (flowlens_mirror_unresolved_total,
// gauge flowlens_mirror_unresolved_pods); a bridged pod whose neighbour is
// unknown gets a neighbour probe so the next Reconcile finds it.
//
// Copying: both directions are always mirrored whatever the pod's
// annotation asked for; the annotation filters the events the agent keeps,
// not the packets, because Suricata parses nothing from half a
// conversation. Two mechanisms, by Config.Mechanism:
//
//   - tcx: the eBPF program bpf/mirror.c (bpf_clone_redirect), attached
//     with TCX at the head of both hooks. It returns TCX_NEXT, so every
//     other TCX program and the legacy tc filters still run after it.
//   - tc: a clsact qdisc and, on each hook, one u32 "match all" filter
//     whose mirred action mirrors to the capture veth with the control
//     action "continue" (TC_ACT_UNSPEC), so lower-priority filters still
//     classify the packet. Note that with tc our filter only runs when the
//     TCX programs before it (a CNI's) returned TCX_NEXT.
//   - auto (default): tcx, falling back to tc where the kernel cannot load
//     the program or lacks TCX; decided once, for every interface, at the
//     first Reconcile by attaching the program to the capture veth for an
//     instant (before the scan below, so a restart on a kernel without
//     TCX adopts its own tc filters).
//
// Ownership: our tc filters are u32 filters at priority TCPriority(+1) with
// class id Marker, our TCX programs are named "fl_mirror", our capture
// veth pair carries the alias CaptureAlias. The first Reconcile after
// start-up walks the namespace's interfaces (and the next ones until that
// walk succeeds once): our filters on wanted interfaces that mirror to
// the current capture veth are kept (no gap in the copy across an agent
// restart), what this instance installed is left alone, every other
// artifact of ours is removed, anything else is never touched. TCX links
// die with the process that made them, so after a real restart only
// in-process leftovers exist. Every Reconcile checks that the mirror of
// each interface it mirrors is still complete (someone may have deleted
// the clsact qdisc or detached our link) and installs it again if not;
// a removal that failed is retried. A capture pair of ours whose peer
// has another name (a previous configuration) is replaced. Close removes
// every filter, every clsact qdisc we created (or that held only our
// filters when we found it) and the capture veth pair; RemoveLeftovers
// does the same for a run that mirrors nothing.
//
// The capture pair: the copies leave through CaptureName ("flc0") and
// arrive on its peer, PeerName ("flc1"), which Suricata reads with
// af-packet. Both ends have MTU 65535 so a GSO/GRO super-packet (up to
// 64 KiB, the copy is not segmented) passes whole; Suricata derives its
// packet size from the MTU, or set af-packet default-packet-size to 65536.
// Offloads stay on (a copy is not checksummed again): run Suricata with
// checksum-checks: auto or no. IPv6 is disabled on both ends (address
// generation off through netlink before they go up, so not even a
// link-local address: this works where /proc/sys is read-only; plus
// disable_ipv6 where the sysctl is writable), and the
// eBPF program fl_capdrop on the peer's tc ingress stops the node's own
// stack from processing the copies (af-packet taps run before tc ingress,
// so Suricata still sees them): a mirrored broadcast or ARP request would
// otherwise reach the node's sockets and neighbour table. (An eBPF program
// because kernels like ours build no gact action; with eBPF unavailable
// the tc mechanism still mirrors, without that drop, and says so.)
// The "flc" prefix is excluded by podlinks, so the flow counters never
// count a copy.
package mirror

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Mechanisms.
const (
	MechanismAuto = "auto"
	MechanismTCX  = "tcx"
	MechanismTC   = "tc"
)

// Markers of what this package creates; fixed so a restarted agent
// recognises its own artifacts and nobody else's.
const (
	// TCPriority is the priority of our u32 filter on clsact ingress, and
	// TCPriority+1 on egress. Lower runs first. The flow counters' cls_bpf
	// (priority 1) runs before it; both hand every packet on (no verdict,
	// "continue"), so neither hides a packet from the other.
	TCPriority = 0x0f1c
	// Marker is the class id our u32 filters carry. clsact has no classes,
	// so it changes nothing but identifies the filter as ours.
	Marker = 0xf1c0f1c0
	// ProgramName is the kernel name of our TCX program.
	ProgramName = "fl_mirror"
	// CaptureAlias is the interface alias of both ends of the capture pair.
	CaptureAlias = "flowlens traffic mirror"
	captureMTU   = 65535
)

// Config configures a Mirror.
type Config struct {
	// NetnsPath is the node's network namespace; empty: the agent's own.
	NetnsPath string
	// CaptureName is the end of the capture veth pair the copies are sent
	// through. Default "flc0". Keep the "flc" prefix: podlinks excludes it.
	CaptureName string
	// PeerName is the end Suricata reads. Default "flc1".
	PeerName string
	// Mechanism is "auto" (default), "tcx" or "tc".
	Mechanism string
}

func (cfg *Config) complete() error {
	if cfg.CaptureName == "" {
		cfg.CaptureName = "flc0"
	}
	if cfg.PeerName == "" {
		cfg.PeerName = "flc1"
	}
	for _, n := range []string{cfg.CaptureName, cfg.PeerName} {
		if len(n) > unix.IFNAMSIZ-1 {
			return fmt.Errorf("capture interface name %q: longer than %d characters", n, unix.IFNAMSIZ-1)
		}
	}
	if cfg.CaptureName == cfg.PeerName {
		return fmt.Errorf("capture interface names: both are %q", cfg.CaptureName)
	}
	switch cfg.Mechanism {
	case "":
		cfg.Mechanism = MechanismAuto
	case MechanismAuto, MechanismTCX, MechanismTC:
	default:
		return fmt.Errorf("mechanism %q: want auto, tcx or tc", cfg.Mechanism)
	}
	return nil
}

// Mirror owns the capture veth pair and the mirrors on pod interfaces.
// Its methods are safe for concurrent use.
type Mirror struct {
	cfg     Config
	metrics *metrics
	h       *netlink.Handle // bound to the node namespace

	mu      sync.Mutex
	mech    string      // tc or tcx once decided
	objs    *bpfObjects // nil with tc
	capIdx  int
	ifs     map[int]*mirrored
	missing map[netip.Addr]bool // addresses currently unresolved
	scanned bool
	closed  bool

	// attachTCX attaches the program to one hook; a field so the auto
	// fallback can be exercised on a kernel that has TCX.
	attachTCX func(ifindex int, typ ebpf.AttachType) (link.Link, error)
}

// mirrored is one pod interface we mirror.
type mirrored struct {
	ifindex  int
	name     string
	addrs    []netip.Addr // the wanted addresses behind it
	links    []link.Link  // tcx
	tc       bool         // our u32 filters are (or may be, after a failure) installed
	ownQdisc bool         // we created its clsact qdisc
	ok       bool         // the last install or check found the mirror complete
}

// New loads the programs (the mirror program for tcx/auto, the capture
// peer's drop program for all) and creates or adopts the capture veth
// pair. Nothing is mirrored until Reconcile.
func New(cfg Config, reg prometheus.Registerer) (*Mirror, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	m := &Mirror{cfg: cfg, ifs: map[int]*mirrored{}, missing: map[netip.Addr]bool{}}
	m.attachTCX = m.attachTCXProgram
	ns, err := openNetns(cfg.NetnsPath)
	if err != nil {
		return nil, err
	}
	if cfg.NetnsPath == "" {
		// A handle "at" a namespace enters it (setns: CAP_SYS_ADMIN), even
		// the agent's own.
		m.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		m.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	ns.Close()
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %q: %w", cfg.NetnsPath, err)
	}
	if m.metrics, err = newMetrics(reg, m.bpfStat); err != nil {
		m.h.Close()
		return nil, err
	}
	m.mech = cfg.Mechanism
	// Loaded in tc mode too: the capture peer's drop program is in it.
	objs := &bpfObjects{}
	if err := loadBpfObjects(objs, nil); err != nil {
		switch cfg.Mechanism {
		case MechanismTCX:
			m.h.Close()
			return nil, fmt.Errorf("load mirror program: %w", err)
		case MechanismAuto:
			klog.InfoS("Cannot load the mirror program, using tc mirred", "err", err)
			m.mech = MechanismTC
		}
		klog.InfoS("Without eBPF the node's own stack also processes the copies arriving on the capture peer", "peer", cfg.PeerName, "err", err)
	} else {
		m.objs = objs
	}
	if err := m.ensureCapture(); err != nil {
		m.closeObjs()
		m.h.Close()
		return nil, err
	}
	klog.InfoS("Traffic mirror ready", "capture", cfg.CaptureName, "suricataReads", cfg.PeerName, "mechanism", m.mech, "netns", cfg.NetnsPath)
	return m, nil
}

func openNetns(path string) (vnetns.NsHandle, error) {
	if path == "" {
		ns, err := vnetns.Get()
		if err != nil {
			return 0, fmt.Errorf("open own netns: %w", err)
		}
		return ns, nil
	}
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("open netns %q: %w", path, err)
	}
	return ns, nil
}

// Mechanism returns the mechanism in use: "tcx" or "tc" ("auto" until the
// first Reconcile decides).
func (m *Mirror) Mechanism() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mech
}

// Select returns the addresses of addrs for which optedIn is true: the set
// to give Reconcile, from the local pods' addresses and the L7 opt-in
// (whatever direction the annotation names, see the package comment).
func Select(addrs []netip.Addr, optedIn func(netip.Addr) bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if optedIn(a) {
			out = append(out, a)
		}
	}
	return out
}

// Reconcile makes the mirrored set the interfaces of the pods with the
// addresses in want (local pods; both addresses of a dual-stack pod may be
// given): installs what is missing, removes what is no longer wanted or
// whose pod is gone, and, on its first call, removes what a previous run
// left behind. It is idempotent; call it when the set changes and
// periodically, so pods whose interface was not found yet (a bridged pod
// that has not talked) and a capture veth someone deleted are picked up.
// It returns the joined errors of the interfaces it could not converge;
// everything else is converged regardless.
func (m *Mirror) Reconcile(want []netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("mirror reconcile: closed")
	}
	return m.reconcile(want)
}

func (m *Mirror) reconcile(want []netip.Addr) error {
	var errs []error
	if !m.closed {
		if err := m.ensureCapture(); err != nil {
			m.metrics.errors.Inc()
			return err
		}
		// Before the scan: it adopts a previous run's tc filters only when
		// this run mirrors with tc too.
		if err := m.decideMechanism(); err != nil {
			m.metrics.errors.Inc()
			return err
		}
	}
	desired := m.resolve(want)
	if !m.scanned {
		if _, err := m.scan(desired); err != nil {
			m.metrics.errors.Inc()
			errs = append(errs, err)
		} else {
			m.scanned = true
		}
	}
	for idx, mi := range m.ifs {
		if tg, ok := desired[idx]; ok && tg.name == mi.name {
			mi.addrs = tg.addrs
			continue
		}
		if err := m.uninstall(mi); err != nil {
			// Kept: the next Reconcile retries the removal.
			m.metrics.errors.Inc()
			errs = append(errs, err)
			continue
		}
		delete(m.ifs, idx)
		klog.V(2).InfoS("Stopped mirroring", "ifindex", idx, "name", mi.name)
	}
	for idx, tg := range desired {
		name := tg.name
		mi, ok := m.ifs[idx]
		if ok && mi.name != name {
			continue // the index's old interface is still being unmirrored (above)
		}
		if ok {
			// Someone may have removed our mirror (a CNI re-creating the
			// clsact qdisc, `tc qdisc del`, `bpftool link detach`): the
			// interface would stay counted as mirrored while its traffic
			// reaches no sensor.
			intact, err := m.intact(mi)
			if err != nil {
				m.metrics.errors.Inc()
				errs = append(errs, fmt.Errorf("check mirror of %s (ifindex %d): %w", name, idx, err))
				continue
			}
			if intact {
				mi.ok = true
				continue
			}
			if mi.ok {
				klog.InfoS("Mirror of a pod interface is gone or changed, reinstalling", "ifindex", idx, "name", name, "mechanism", m.mech)
				m.metrics.repaired.Inc()
			}
		} else {
			mi = &mirrored{ifindex: idx, name: name, addrs: tg.addrs}
		}
		if err := m.install(mi); err != nil {
			// A known interface stays known (and not ok): the next
			// Reconcile finds it broken and installs again.
			mi.ok = false
			m.metrics.errors.Inc()
			errs = append(errs, fmt.Errorf("mirror %s (ifindex %d): %w", name, idx, err))
			continue
		}
		mi.ok = true
		if !ok {
			klog.V(2).InfoS("Mirroring pod interface", "ifindex", idx, "name", name, "mechanism", m.mech)
		}
		m.ifs[idx] = mi
	}
	n := 0
	for _, mi := range m.ifs {
		if mi.ok {
			n++
		}
	}
	m.metrics.mirrored.Set(float64(n))
	return errors.Join(errs...)
}

// decideMechanism turns auto into tcx or tc, once: by attaching the
// program to the capture veth's ingress (nothing but the peer sends
// there) and detaching it at once.
func (m *Mirror) decideMechanism() error {
	if m.mech != MechanismAuto {
		return nil
	}
	if m.objs == nil {
		m.mech = MechanismTC
		return nil
	}
	l, err := m.attachTCX(m.capIdx, ebpf.AttachTCXIngress)
	switch {
	case err == nil:
		if err := l.Close(); err != nil {
			return fmt.Errorf("detach tcx probe from %s: %w", m.cfg.CaptureName, err)
		}
		m.mech = MechanismTCX
	case tcxUnsupported(err):
		klog.InfoS("TCX attach unavailable, mirroring with tc mirred", "err", err)
		m.mech = MechanismTC
	default:
		return fmt.Errorf("probe tcx attach on %s: %w", m.cfg.CaptureName, err)
	}
	return nil
}

// intact reports whether mi's mirror is fully in place: both TCX links
// still attached to the interface, or exactly our two tc filters to the
// current capture veth (a re-created capture veth has a new index).
func (m *Mirror) intact(mi *mirrored) (bool, error) {
	if m.mech == MechanismTCX {
		if len(mi.links) != len(tcxHooks) {
			return false, nil
		}
		for _, l := range mi.links {
			info, err := l.Info()
			if err != nil {
				return false, fmt.Errorf("tcx link info: %w", err)
			}
			// A detached link reports ifindex 0.
			if tcx := info.TCX(); tcx == nil || int(tcx.Ifindex) != mi.ifindex {
				return false, nil
			}
		}
		return true, nil
	}
	if !mi.tc {
		return false, nil
	}
	st, err := m.listTC(mi.ifindex)
	if err != nil {
		return false, err
	}
	return st.clsact && exactlyOurMirror(st, m.capIdx), nil
}

// Close removes every mirror, our leftovers from a previous run (when
// Reconcile never ran), the capture veth pair and the program. Safe to
// call twice.
func (m *Mirror) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	errs := []error{m.reconcile(nil)}
	if err := m.deleteCapture(); err != nil {
		errs = append(errs, err)
	}
	m.closeObjs()
	m.h.Close()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close traffic mirror: %w", err)
	}
	return nil
}

func (m *Mirror) closeObjs() {
	if m.objs != nil {
		m.objs.Close()
		m.objs = nil
	}
}

func (m *Mirror) install(mi *mirrored) error {
	if m.mech == MechanismTC {
		return m.installTC(mi)
	}
	for _, l := range mi.links { // detached behind our back, or half of a pair
		_ = l.Close()
	}
	mi.links = nil
	return m.installTCX(mi)
}

func (m *Mirror) uninstall(mi *mirrored) error {
	var errs []error
	for _, l := range mi.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach tcx: %w", err))
		}
	}
	mi.links = nil
	if mi.tc {
		if err := m.uninstallTC(mi.ifindex, mi.ownQdisc); err != nil {
			errs = append(errs, err)
		} else {
			mi.tc = false
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unmirror %s (ifindex %d): %w", mi.name, mi.ifindex, err)
	}
	return nil
}

func tcxUnsupported(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}

// gone reports an error that means the interface (and so everything on
// it) no longer exists.
func gone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
