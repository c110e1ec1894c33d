package bpfcounters

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/netns"
)

type attachKey struct {
	netns   string
	ifindex int
}

// attachment is what Attach installed on one interface: two TCX links, or
// two cls_bpf filters on the interface's clsact qdisc.
type attachment struct {
	mode    string
	links   []link.Link
	filters []*netlink.BpfFilter
}

// tcPriority is the priority of our cls_bpf filters on clsact: the
// highest (lowest number), so a filter that redirects or drops packets (a
// CNI's) cannot hide them from the counters, which only look and return
// TC_ACT_UNSPEC to let the next filter run. A fixed value makes a
// restarted agent replace its own filters instead of stacking them.
const (
	tcPriority = 1
	tcHandle   = 0xf1
	tcName     = "flowlens_counters"
)

// Attach installs both programs on the interface ifindex of the network
// namespace at netnsPath (empty: the agent's own). Attaching again is a
// no-op; the attach time is recorded for AttachedAt.
func (c *Counters) Attach(ifindex int, netnsPath string) error {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	k := attachKey{netnsPath, ifindex}
	if _, ok := c.attached[k]; ok {
		return nil
	}
	var a *attachment
	err := netns.Do(netnsPath, func() error {
		var err error
		switch c.cfg.Attach {
		case AttachTCX:
			a, err = c.attachTCX(ifindex)
		case AttachTC:
			a, err = c.attachTC(ifindex)
		default:
			a, err = c.attachTCX(ifindex)
			if err != nil && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				klog.InfoS("TCX attach unavailable, falling back to tc clsact", "ifindex", ifindex, "netns", netnsPath, "err", err)
				a, err = c.attachTC(ifindex)
			}
		}
		return err
	})
	if err != nil {
		c.metrics.attachErrors.Inc()
		return fmt.Errorf("attach flow counters to ifindex %d in netns %q: %w", ifindex, netnsPath, err)
	}
	c.attached[k] = a
	now := time.Now().UnixNano()
	c.mu.Lock()
	c.attachedAt[uint32(ifindex)] = now
	delete(c.detachedAt, uint32(ifindex))
	c.mu.Unlock()
	c.metrics.attached.Set(float64(len(c.attached)))
	klog.V(2).InfoS("Attached flow counters", "ifindex", ifindex, "netns", netnsPath, "mode", a.mode)
	return nil
}

// Detach removes what Attach installed on the interface. Detaching an
// interface that is not attached, or that is gone, is not an error.
func (c *Counters) Detach(ifindex int, netnsPath string) error {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	k := attachKey{netnsPath, ifindex}
	a, ok := c.attached[k]
	if !ok {
		return nil
	}
	delete(c.attached, k)
	c.metrics.attached.Set(float64(len(c.attached)))
	c.mu.Lock()
	if c.detachedAt != nil {
		c.detachedAt[uint32(ifindex)] = time.Now().UnixNano()
	}
	c.mu.Unlock()
	if err := a.detach(k); err != nil {
		c.metrics.attachErrors.Inc()
		return err
	}
	return nil
}

func (c *Counters) attachTCX(ifindex int) (*attachment, error) {
	a := &attachment{mode: AttachTCX}
	for _, p := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{c.objs.FlowFromPod, ebpf.AttachTCXIngress}, {c.objs.FlowToPod, ebpf.AttachTCXEgress}} {
		// First in the chain: a program after it that redirects or
		// drops (a CNI's) would otherwise hide packets from the counts.
		// Ours returns TCX_NEXT, so everything after it still runs.
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p.prog, Attach: p.typ, Anchor: link.Head()})
		if err != nil {
			for _, l := range a.links {
				l.Close()
			}
			return nil, fmt.Errorf("tcx %s: %w", p.typ, err)
		}
		a.links = append(a.links, l)
	}
	return a, nil
}

func (c *Counters) attachTC(ifindex int) (*attachment, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// Another user (a CNI, our traffic mirror) may have created it already.
	if err := h.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	a := &attachment{mode: AttachTC}
	for _, p := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
	}{{c.objs.FlowFromPod, netlink.HANDLE_MIN_INGRESS, "ingress"}, {c.objs.FlowToPod, netlink.HANDLE_MIN_EGRESS, "egress"}} {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex, Parent: p.parent, Handle: tcHandle,
				Priority: tcPriority, Protocol: unix.ETH_P_ALL,
			},
			Fd: p.prog.FD(), Name: tcName, DirectAction: true,
		}
		if err := h.FilterReplace(f); err != nil {
			for _, f := range a.filters {
				_ = h.FilterDel(f)
			}
			return nil, fmt.Errorf("tc %s filter: %w", p.name, err)
		}
		a.filters = append(a.filters, f)
	}
	return a, nil
}

func (a *attachment) detach(k attachKey) error {
	var errs []error
	for _, l := range a.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(a.filters) > 0 {
		err := netns.Do(k.netns, func() error {
			h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("netlink handle: %w", err)
			}
			defer h.Close()
			for _, f := range a.filters {
				// A deleted interface took its filters with it.
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach flow counters from ifindex %d in netns %q: %w", k.ifindex, k.netns, err)
	}
	return nil
}
