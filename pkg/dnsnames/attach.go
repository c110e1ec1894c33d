package dnsnames

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/netns"
)

// The attach code follows pkg/bpfcounters' (TCX at the head, else a
// cls_bpf direct-action filter on clsact) for one program at egress only.
// It is not shared through a package yet: bpfcounters' version is woven
// into its attach-time bookkeeping, and pkg/mirror's attachments have
// another shape (u32 mirred filters in tc mode).

type attachKey struct {
	netns   string
	ifindex int
}

// attachment is what Attach installed on one interface: a TCX link or a
// cls_bpf filter.
type attachment struct {
	mode   string
	link   link.Link
	filter *netlink.BpfFilter
}

// The cls_bpf filter shares the flow counters' priority (first on
// clsact: a filter that redirects or drops cannot hide responses from
// it) under its own handle and name, so each replaces only its own
// filter when a restarted agent attaches again.
const (
	tcPriority = 1
	tcHandle   = 0xd5
	tcName     = "flowlens_dnsnames"
)

// Attach installs the program at egress of the interface ifindex of the
// network namespace at netnsPath (empty: the agent's own). Attaching
// again is a no-op.
func (n *Names) Attach(ifindex int, netnsPath string) error {
	n.attachMu.Lock()
	defer n.attachMu.Unlock()
	k := attachKey{netnsPath, ifindex}
	if _, ok := n.attached[k]; ok {
		return nil
	}
	n.objMu.Lock()
	prog, closed := n.objs.DnsToPod, n.closed
	n.objMu.Unlock()
	if closed || prog == nil {
		return fmt.Errorf("attach dns response program to ifindex %d in netns %q: closed", ifindex, netnsPath)
	}
	var a *attachment
	err := netns.Do(netnsPath, func() error {
		var err error
		switch n.cfg.Attach {
		case AttachTCX:
			a, err = attachTCX(prog, ifindex)
		case AttachTC:
			a, err = attachTC(prog, ifindex)
		default:
			a, err = attachTCX(prog, ifindex)
			if err != nil && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				klog.InfoS("TCX attach unavailable, falling back to tc clsact", "program", bpfProgDnsToPod, "ifindex", ifindex, "netns", netnsPath, "err", err)
				a, err = attachTC(prog, ifindex)
			}
		}
		return err
	})
	if err != nil {
		n.metrics.attachErrors.Inc()
		return fmt.Errorf("attach dns response program to ifindex %d in netns %q: %w", ifindex, netnsPath, err)
	}
	n.attached[k] = a
	n.metrics.attached.Set(float64(len(n.attached)))
	klog.V(2).InfoS("Attached DNS response program", "ifindex", ifindex, "netns", netnsPath, "mode", a.mode)
	return nil
}

// Detach removes what Attach installed on the interface. Detaching an
// interface that is not attached, or that is gone, is not an error.
func (n *Names) Detach(ifindex int, netnsPath string) error {
	n.attachMu.Lock()
	defer n.attachMu.Unlock()
	k := attachKey{netnsPath, ifindex}
	a, ok := n.attached[k]
	if !ok {
		return nil
	}
	delete(n.attached, k)
	n.metrics.attached.Set(float64(len(n.attached)))
	if err := a.detach(k); err != nil {
		n.metrics.attachErrors.Inc()
		return err
	}
	return nil
}

func attachTCX(prog *ebpf.Program, ifindex int) (*attachment, error) {
	// At the head: a program after it that redirects or drops (a CNI's)
	// would otherwise hide responses. Ours returns TCX_NEXT.
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXEgress, Anchor: link.Head()})
	if err != nil {
		return nil, fmt.Errorf("tcx egress: %w", err)
	}
	return &attachment{mode: AttachTCX, link: l}, nil
}

func attachTC(prog *ebpf.Program, ifindex int) (*attachment, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// Another user (a CNI, the flow counters, the mirror) may have made it.
	if err := h.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_EGRESS, Handle: tcHandle,
			Priority: tcPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: tcName, DirectAction: true,
	}
	if err := h.FilterReplace(f); err != nil {
		return nil, fmt.Errorf("tc egress filter: %w", err)
	}
	return &attachment{mode: AttachTC, filter: f}, nil
}

func (a *attachment) detach(k attachKey) error {
	var errs []error
	if a.link != nil {
		if err := a.link.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if a.filter != nil {
		err := netns.Do(k.netns, func() error {
			h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("netlink handle: %w", err)
			}
			defer h.Close()
			// A deleted interface took its filter with it.
			if err := h.FilterDel(a.filter); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("delete tc filter: %w", err)
			}
			return nil
		})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach dns response program from ifindex %d in netns %q: %w", k.ifindex, k.netns, err)
	}
	return nil
}
