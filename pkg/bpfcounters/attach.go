package bpfcounters

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

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
	c.markSender(k)
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
	// Out of senders before the hooks go: a packet in flight is then
	// counted at both ends (the agent uses one), never at none.
	if err := c.objs.Senders.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		c.metrics.attachErrors.Inc()
		klog.ErrorS(err, "Could not remove an interface from the flow counters' senders", "ifindex", ifindex)
	}
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

// markSender tells the program that k's interface counts what its pod
// sends, once its hooks are attached: a packet that entered there is then
// counted there only (not again where it leaves toward another pod). The
// program knows interfaces by ifindex, which only names one interface in
// one network namespace: with interfaces of several namespaces attached,
// the set is emptied for good and every packet is counted at both ends,
// as it was before (the agent uses the sender's count either way).
// c.attachMu held.
func (c *Counters) markSender(k attachKey) {
	if c.sendersOff {
		return
	}
	for other := range c.attached {
		if other.netns != k.netns {
			c.sendersOff = true
			var key uint32
			var val uint8
			var stale []uint32
			it := c.objs.Senders.Iterate()
			for it.Next(&key, &val) {
				stale = append(stale, key)
			}
			for _, idx := range stale {
				if err := c.objs.Senders.Delete(idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					c.metrics.attachErrors.Inc()
					klog.ErrorS(err, "Could not empty the flow counters' senders", "ifindex", idx)
				}
			}
			klog.InfoS("Flow counters attached in several network namespaces: packets between local pods are counted at both ends", "netns", k.netns, "other", other.netns)
			return
		}
	}
	if err := c.objs.Senders.Put(uint32(k.ifindex), uint8(1)); err != nil {
		c.metrics.attachErrors.Inc()
		klog.ErrorS(err, "Could not mark an interface as a sender for the flow counters (its packets are counted at both ends)", "ifindex", k.ifindex)
	}
}
