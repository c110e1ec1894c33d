// Package tcattach keeps eBPF TC programs on an interface the way every
// flowlens program that only looks at packets wants them: first in the
// chain (TCX anchored at the head, else a cls_bpf direct-action filter at
// the highest priority on clsact), so that a program or filter after it
// that redirects or drops (a CNI's) cannot hide packets from it. The
// programs return "no verdict", so whatever follows still runs.
package tcattach

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

// Attach modes.
const (
	Auto = "auto" // TCX, else tc where the kernel has no TCX
	TCX  = "tcx"
	TC   = "tc"
)

// Hook is one program and the direction it sees.
type Hook struct {
	Prog    *ebpf.Program
	Ingress bool // else egress
}

// Filter names a program's cls_bpf filters: a fixed handle and name per
// program, so that a restarted agent replaces its own filter instead of
// stacking another, and never one of another program.
type Filter struct {
	Handle uint32
	Name   string
}

// tcPriority is the highest priority on clsact (lowest number).
const tcPriority = 1

// Attachment is what Attach installed on one interface: TCX links, or
// cls_bpf filters.
type Attachment struct {
	mode    string
	links   []link.Link
	filters []*netlink.BpfFilter
}

// Mode is TCX or TC.
func (a *Attachment) Mode() string { return a.mode }

// Attach installs hooks on the interface ifindex of the network namespace
// at netnsPath (empty: the caller's own), by mode. With Auto, a kernel
// without TCX gets tc filters. Either every hook is installed or none.
func Attach(mode string, ifindex int, netnsPath string, f Filter, hooks ...Hook) (*Attachment, error) {
	var a *Attachment
	err := netns.Do(netnsPath, func() error {
		var err error
		switch mode {
		case TCX:
			a, err = attachTCX(ifindex, hooks)
		case TC:
			a, err = attachTC(ifindex, f, hooks)
		default:
			a, err = attachTCX(ifindex, hooks)
			if err != nil && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				klog.InfoS("TCX attach unavailable, falling back to tc clsact", "program", f.Name, "ifindex", ifindex, "netns", netnsPath, "err", err)
				a, err = attachTC(ifindex, f, hooks)
			}
		}
		return err
	})
	return a, err
}

func attachTCX(ifindex int, hooks []Hook) (*Attachment, error) {
	a := &Attachment{mode: TCX}
	for _, h := range hooks {
		typ := ebpf.AttachTCXEgress
		if h.Ingress {
			typ = ebpf.AttachTCXIngress
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.Prog, Attach: typ, Anchor: link.Head()})
		if err != nil {
			for _, l := range a.links {
				l.Close()
			}
			return nil, fmt.Errorf("tcx %s: %w", typ, err)
		}
		a.links = append(a.links, l)
	}
	return a, nil
}

func attachTC(ifindex int, f Filter, hooks []Hook) (*Attachment, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// Another user (a CNI, another of our programs, the mirror) may have
	// made it already.
	if err := h.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	a := &Attachment{mode: TC}
	for _, hk := range hooks {
		parent, dir := uint32(netlink.HANDLE_MIN_EGRESS), "egress"
		if hk.Ingress {
			parent, dir = netlink.HANDLE_MIN_INGRESS, "ingress"
		}
		bf := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex, Parent: parent, Handle: f.Handle,
				Priority: tcPriority, Protocol: unix.ETH_P_ALL,
			},
			Fd: hk.Prog.FD(), Name: f.Name, DirectAction: true,
		}
		if err := h.FilterReplace(bf); err != nil {
			for _, done := range a.filters {
				_ = h.FilterDel(done)
			}
			return nil, fmt.Errorf("tc %s filter: %w", dir, err)
		}
		a.filters = append(a.filters, bf)
	}
	return a, nil
}

// Detach removes what Attach installed; the interface being gone (it took
// its filters with it) is not an error.
func (a *Attachment) Detach(netnsPath string) error {
	var errs []error
	for _, l := range a.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(a.filters) > 0 {
		err := netns.Do(netnsPath, func() error {
			h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("netlink handle: %w", err)
			}
			defer h.Close()
			for _, f := range a.filters {
				if err := h.FilterDel(f); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
					errs = append(errs, fmt.Errorf("delete tc filter: %w", err))
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
