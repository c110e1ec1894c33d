package bpfcounters

import (
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/tcattach"
)

type attachKey struct {
	netns   string
	ifindex int
}

// attachment is what Attach installed on one interface: two TCX links, or
// two cls_bpf filters on the interface's clsact qdisc.
type attachment = tcattach.Attachment

// tcFilter names our cls_bpf filters: a fixed handle and name make a
// restarted agent replace its own filters instead of stacking them.
var tcFilter = tcattach.Filter{Handle: 0xf1, Name: "flowlens_counters"}

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
	a, err := tcattach.Attach(c.cfg.Attach, ifindex, netnsPath, tcFilter,
		tcattach.Hook{Prog: c.objs.FlowFromPod, Ingress: true}, tcattach.Hook{Prog: c.objs.FlowToPod})
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
	klog.V(2).InfoS("Attached flow counters", "ifindex", ifindex, "netns", netnsPath, "mode", a.Mode())
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
	if err := a.Detach(netnsPath); err != nil {
		c.metrics.attachErrors.Inc()
		return fmt.Errorf("detach flow counters from ifindex %d in netns %q: %w", ifindex, netnsPath, err)
	}
	return nil
}
