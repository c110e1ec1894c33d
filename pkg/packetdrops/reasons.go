package packetdrops

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// Reason slots, as bpf/drops.c counts them: a core reason (enum
// skb_drop_reason below coreSlots) by its value, a subsystem's reason
// (subsystem id in the upper 16 bits) in its subsystem's slot after them.
const (
	coreSlots   = 256
	subsysSlots = 16
	slots       = coreSlots + subsysSlots
)

// slotOf is the kernel's slot of a reason value (same arithmetic as the
// program's).
func slotOf(reason uint32) int {
	if reason < coreSlots {
		return int(reason)
	}
	sub := reason >> 16
	if sub >= subsysSlots {
		sub = subsysSlots - 1
	}
	return coreSlots + int(sub)
}

// reasonNames names each slot from the running kernel's BTF. The names are
// read, never hard-coded: the enum's numbering changes between kernel
// versions (values are inserted in the middle).
type reasonNames struct {
	names  [slots]string
	byName map[string]int // exported name -> slot
}

const (
	reasonPrefix = "SKB_DROP_REASON_"
	subsysPrefix = "SKB_DROP_REASON_SUBSYS_"
)

// exportName is the name a reason is exported under: without the enum's
// prefix ("SKB_DROP_REASON_NETFILTER_DROP" -> "NETFILTER_DROP"; the two
// non-drop values SKB_NOT_DROPPED_YET and SKB_CONSUMED lose "SKB_").
func exportName(enumName string) string {
	if s, ok := strings.CutPrefix(enumName, reasonPrefix); ok {
		return s
	}
	if s, ok := strings.CutPrefix(enumName, "SKB_"); ok {
		return s
	}
	return enumName
}

// kernelReasonNames reads enum skb_drop_reason (and, where the kernel has
// it, enum skb_drop_reason_subsys) from the kernel's BTF.
func kernelReasonNames() (*reasonNames, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	var core *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &core); err != nil {
		return nil, fmt.Errorf("kernel BTF: enum skb_drop_reason: %w", err)
	}
	var subsys []btf.EnumValue
	var sub *btf.Enum
	if err := spec.TypeByName("skb_drop_reason_subsys", &sub); err == nil {
		subsys = sub.Values
	}
	return newReasonNames(core.Values, subsys), nil
}

// newReasonNames builds the slot names from the two enums' values. Values
// outside the slots (SKB_DROP_REASON_MAX, SUBSYS_MASK, SUBSYS_NUM) name
// no reason and are skipped.
func newReasonNames(core, subsys []btf.EnumValue) *reasonNames {
	n := &reasonNames{byName: make(map[string]int)}
	for _, v := range core {
		if v.Value >= coreSlots || strings.HasSuffix(v.Name, "_MAX") {
			continue
		}
		name := exportName(v.Name)
		n.names[v.Value] = name
		n.byName[name] = int(v.Value)
	}
	for _, v := range subsys {
		// Subsystem 0 is the core: its reasons are the core enum's.
		if v.Value == 0 || v.Value >= subsysSlots || strings.HasSuffix(v.Name, "_NUM") {
			continue
		}
		name := "SUBSYS_" + strings.TrimPrefix(v.Name, subsysPrefix)
		n.names[coreSlots+int(v.Value)] = name
		n.byName[name] = coreSlots + int(v.Value)
	}
	return n
}

// slotName is the label of a slot; a value this kernel's BTF does not
// name (there is none today) still gets a bounded label.
func (n *reasonNames) slotName(slot int) string {
	if slot < 0 || slot >= slots {
		return "UNKNOWN"
	}
	if s := n.names[slot]; s != "" {
		return s
	}
	if slot >= coreSlots {
		return fmt.Sprintf("SUBSYS_%d", slot-coreSlots)
	}
	return fmt.Sprintf("UNKNOWN_%d", slot)
}

// name is the exported name of a reason value.
func (n *reasonNames) name(reason uint32) string { return n.slotName(slotOf(reason)) }
