package mirror

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hooks are the two clsact parents: ingress is what the pod sent, egress
// what it receives.
var hooks = [2]uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}

// hookPrio is our filter priority per hook. u32 keeps the hash tables of
// both hooks of one qdisc together, told apart by priority only: with one
// priority for both, each hook would list (and a fixed handle would hit)
// the other's filter too.
var hookPrio = [2]uint16{TCPriority, TCPriority + 1}

func (m *Mirror) addClsact(ifindex int) error {
	return m.h.QdiscAdd(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	})
}

// u32All is our u32 "match u32 0 0" filter at our priority with our
// marker and one action. The kernel picks the handle: u32 shares its hash
// tables between the two hooks of a clsact qdisc, so a fixed handle would
// put the egress filter into the ingress filter's table (where it never
// sees an egress packet).
func u32All(ifindex int, parent uint32, prio uint16, a netlink.Action) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: parent,
			Priority: prio, Protocol: unix.ETH_P_ALL,
		},
		ClassId: Marker,
		Sel: &netlink.TcU32Sel{
			Flags: netlink.TC_U32_TERMINAL,
			Nkeys: 1,
			Keys:  []netlink.TcU32Key{{Mask: 0, Val: 0}},
		},
		Actions: []netlink.Action{a},
	}
}

func (m *Mirror) mirredFilter(ifindex, hook int) *netlink.U32 {
	// "continue" (TC_ACT_UNSPEC), not mirred's default "pipe": a filter
	// that returns pipe ends classification, which would silently turn
	// off every lower-priority filter of the CNI on this interface.
	return u32All(ifindex, hooks[hook], hookPrio[hook], &netlink.MirredAction{
		ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_UNSPEC},
		MirredAction: netlink.TCA_EGRESS_MIRROR,
		Ifindex:      m.capIdx,
	})
}

func (m *Mirror) installTC(mi *mirrored) error {
	err := m.addClsact(mi.ifindex)
	if err == nil || errors.Is(err, unix.EEXIST) {
		// From here on filters of ours may be there, also on failure:
		// uninstall must look.
		mi.tc = true
	}
	switch {
	case err == nil:
		mi.ownQdisc = true
	case errors.Is(err, unix.EEXIST):
		// A CNI, the flow counters or a previous run of ours made it.
	default:
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	st, err := m.listTC(mi.ifindex)
	if err != nil {
		return err
	}
	for i, parent := range hooks {
		if len(st.targets[i]) == 1 && st.targets[i][0] == m.capIdx {
			continue // already there (adopted, or installed before)
		}
		for _, f := range st.ours[i] { // to an old capture veth, or duplicates
			if err := m.h.FilterDel(f); err != nil && !gone(err) {
				return fmt.Errorf("replace mirred filter: %w", err)
			}
		}
		if err := m.h.FilterAdd(m.mirredFilter(mi.ifindex, i)); err != nil {
			_ = m.uninstallTC(mi.ifindex, mi.ownQdisc)
			return fmt.Errorf("add mirred filter (parent %x): %w", parent, err)
		}
	}
	return nil
}

// ours reports whether f, listed on hook, is one of our u32 filters, and
// the interface it mirrors to (0 for one that is not a mirror).
func ours(f netlink.Filter, hook int) (bool, int) {
	u, ok := f.(*netlink.U32)
	if !ok || u.Priority != hookPrio[hook] || u.ClassId != Marker {
		return false, 0
	}
	for _, a := range u.Actions {
		if mr, ok := a.(*netlink.MirredAction); ok {
			return true, mr.Ifindex
		}
	}
	return true, 0
}

// tcState lists the filters on both hooks of ifindex: ours (with their
// mirror targets, per hook) and how many are somebody else's.
type tcState struct {
	clsact  bool
	ours    [2][]netlink.Filter
	targets [2][]int
	foreign int
}

func (m *Mirror) listTC(ifindex int) (tcState, error) {
	var st tcState
	qds, err := m.h.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}})
	if err != nil {
		return st, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qds {
		if q.Type() == "clsact" {
			st.clsact = true
		}
	}
	if !st.clsact {
		return st, nil
	}
	for i, parent := range hooks {
		fs, err := m.h.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, parent)
		if err != nil {
			return st, fmt.Errorf("list tc filters (parent %x): %w", parent, err)
		}
		for _, f := range fs {
			if ok, target := ours(f, i); ok {
				st.ours[i] = append(st.ours[i], f)
				st.targets[i] = append(st.targets[i], target)
			} else {
				st.foreign++
			}
		}
	}
	return st, nil
}

// uninstallTC deletes our filters on ifindex and, when dropQdisc and no
// filter is left, the clsact qdisc. A vanished interface is not an error.
func (m *Mirror) uninstallTC(ifindex int, dropQdisc bool) error {
	st, err := m.listTC(ifindex)
	if gone(err) || errors.Is(err, unix.EINVAL) && !linkExists(m.h, ifindex) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for i := range hooks {
		for _, f := range st.ours[i] {
			if err := m.h.FilterDel(f); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("delete mirred filter: %w", err))
			}
		}
	}
	if dropQdisc && st.clsact && st.foreign == 0 && len(errs) == 0 {
		if err := m.h.QdiscDel(&netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete clsact qdisc: %w", err))
		}
	}
	return errors.Join(errs...)
}

func linkExists(h *netlink.Handle, ifindex int) bool {
	_, err := h.LinkByIndex(ifindex)
	return err == nil
}
