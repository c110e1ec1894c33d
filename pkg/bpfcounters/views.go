package bpfcounters

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// Hooks of the flow key, as seen from the host side of a pod's interface.
const (
	hookFromPod uint8 = 0 // host-side ingress: the pod sent the packet
	hookToPod   uint8 = 1 // host-side egress: the pod receives it
)

// TCP flag bits in the value's tcp_flags.
const (
	tcpFIN = 0x01
	tcpRST = 0x04
	// valIncomplete (VAL_INCOMPLETE in bpf/counters.c), above the TCP
	// bits: the key counted a packet conntrack accounts differently (a
	// first fragment, an IPv6 routing/destination-options/AH header).
	valIncomplete = 0x100
)

// Ring record kinds (REC_* in bpf/counters.c) and the record's layout:
// the 40-byte key, then the kind.
const (
	recChanged = 1
	recFinRst  = 2
	recLost    = 3

	keySize = 40
	recSize = keySize + 4
)

func keyOf(t flow.Tuple, hook uint8) bpfFlowKey {
	return bpfFlowKey{Saddr: t.SrcIP, Daddr: t.DstIP, Sport: t.SrcPort, Dport: t.DstPort, Proto: t.Proto, Hook: hook}
}

func viewOf(k *bpfFlowKey) flow.Tuple {
	return flow.Tuple{SrcIP: k.Saddr, DstIP: k.Daddr, SrcPort: k.Sport, DstPort: k.Dport, Proto: k.Proto}
}

// connViews are the four keys under which the packets of a conntrack
// connection are counted, per direction: [0] at the sender's interface
// (hook from_pod), [1] at the receiver's (hook to_pod).
//
// The sender sees the tuple before the node translates it, the receiver
// after: the client's packets leave it addressed to the Service VIP and
// reach the endpoint from the (possibly source-NATed) client address; the
// replies leave the endpoint addressed to that client address and reach
// the client from the VIP. ICMP keeps its identifier (conntrack reports
// no translated one) and the original type<<8|code in the port the BPF
// program puts it in (see icmp_ports in bpf/counters.c).
type connViews struct {
	fwd, rev [2]bpfFlowKey
}

func viewsOf(c *flow.Conn) connViews {
	t := c.Tuple
	src, srcPort := t.SrcIP, t.SrcPort
	if c.IsSNATed() {
		src = c.ProxySnatIP
		if t.Proto != flow.ProtoICMP && t.Proto != flow.ProtoICMPv6 {
			srcPort = c.ProxySnatPort
		}
	}
	origDst, origDstPort := c.OrigDstIP, c.OrigDstPort
	if origDst == ([16]byte{}) {
		// A source that did not report the original destination: the
		// connection was not translated as far as we know.
		origDst, origDstPort = t.DstIP, t.DstPort
	}
	mk := func(sip [16]byte, sport uint16, dip [16]byte, dport uint16, hook uint8) bpfFlowKey {
		return bpfFlowKey{Saddr: sip, Daddr: dip, Sport: sport, Dport: dport, Proto: t.Proto, Hook: hook}
	}
	return connViews{
		fwd: [2]bpfFlowKey{
			mk(t.SrcIP, t.SrcPort, origDst, origDstPort, hookFromPod),
			mk(src, srcPort, t.DstIP, t.DstPort, hookToPod),
		},
		rev: [2]bpfFlowKey{
			mk(t.DstIP, t.DstPort, src, srcPort, hookFromPod),
			mk(origDst, origDstPort, t.SrcIP, t.SrcPort, hookToPod),
		},
	}
}

// pickResult is the entry chosen for one direction.
type pickResult struct {
	found bool
	val   bpfFlowVal
}

// pick returns the sender-side entry of a direction if there is one, else
// the receiver-side one. Never both: a connection between two pods of
// this node is counted at both pods' interfaces, and adding the two would
// count every packet twice.
func pick(t table, keys *[2]bpfFlowKey, r *pickResult) error {
	*r = pickResult{}
	for i := range keys {
		ok, err := t.lookup(&keys[i], &r.val)
		if err != nil {
			*r = pickResult{}
			return err
		}
		if ok {
			r.found = true
			return nil
		}
	}
	r.val = bpfFlowVal{}
	return nil
}
