package dnsnames

import (
	"fmt"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/tcattach"
)

type attachKey struct {
	netns   string
	ifindex int
}

// attachment is what Attach installed on one interface: a TCX link or a
// cls_bpf filter.
type attachment = tcattach.Attachment

// tcFilter: the cls_bpf filter shares the flow counters' priority (first
// on clsact) under its own handle and name, so each replaces only its own
// filter when a restarted agent attaches again.
var tcFilter = tcattach.Filter{Handle: 0xd5, Name: "flowlens_dnsnames"}

// Attach installs the program at egress of the interface ifindex of the
// network namespace at netnsPath (empty: the agent's own): every response
// a pod receives crosses it. Attaching again is a no-op.
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
	a, err := tcattach.Attach(n.cfg.Attach, ifindex, netnsPath, tcFilter, tcattach.Hook{Prog: prog})
	if err != nil {
		n.metrics.attachErrors.Inc()
		return fmt.Errorf("attach dns response program to ifindex %d in netns %q: %w", ifindex, netnsPath, err)
	}
	n.attached[k] = a
	n.metrics.attached.Set(float64(len(n.attached)))
	klog.V(2).InfoS("Attached DNS response program", "ifindex", ifindex, "netns", netnsPath, "mode", a.Mode())
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
	if err := a.Detach(netnsPath); err != nil {
		n.metrics.attachErrors.Inc()
		return fmt.Errorf("detach dns response program from ifindex %d in netns %q: %w", ifindex, netnsPath, err)
	}
	return nil
}
