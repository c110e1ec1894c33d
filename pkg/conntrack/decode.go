package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flowlens/flowlens/pkg/flow"
)

// ctnetlink attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
// Only the ones the decoder reads or the dump request sends are listed.
const (
	ctaTupleOrig     = 1
	ctaTupleReply    = 2
	ctaStatus        = 3
	ctaProtoinfo     = 4
	ctaMark          = 8
	ctaCountersOrig  = 9
	ctaCountersReply = 10
	ctaID            = 12
	ctaZone          = 18
	ctaTimestamp     = 20
	ctaMarkMask      = 21

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum       = 1
	ctaProtoSrcPort   = 2
	ctaProtoDstPort   = 3
	ctaProtoICMPID    = 4
	ctaProtoICMPType  = 5
	ctaProtoICMPCode  = 6
	ctaProtoICMPv6ID  = 7
	ctaProtoICMPv6Typ = 8
	ctaProtoICMPv6Cod = 9

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	ctaCountersPackets   = 1
	ctaCountersBytes     = 2
	ctaCounters32Packets = 3
	ctaCounters32Bytes   = 4

	ctaTimestampStart = 1
	ctaTimestampStop  = 2

	nlaHdrLen = 4
	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER, which the
	// kernel sets on some attributes and not others depending on version.
	nlaTypeMask = 0x3fff
)

// Decoding errors. They are sentinels so the hot path does not format
// strings; callers wrap them with the attribute that failed.
var (
	errTruncated    = errors.New("attribute truncated")
	errBadLength    = errors.New("attribute has wrong length")
	errMissingTuple = errors.New("missing original or reply tuple")
	errBadTuple     = errors.New("tuple lacks addresses or protocol")
)

// tuple is one direction of a conntrack entry as the kernel sends it.
type tuple struct {
	src, dst  [16]byte
	sport     uint16
	dport     uint16
	icmpID    uint16
	icmpType  uint8
	icmpCode  uint8
	proto     uint8
	haveSrc   bool
	haveDst   bool
	haveProto bool
}

// attrs iterates over the netlink attributes in b without copying: each call
// to next exposes the attribute's type and a sub-slice of b as its payload.
type attrs struct {
	b   []byte
	typ uint16
	val []byte
	err error
}

func (a *attrs) next() bool {
	if a.err != nil || len(a.b) == 0 {
		return false
	}
	if len(a.b) < nlaHdrLen {
		a.err = errTruncated
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.b))
	if l < nlaHdrLen || l > len(a.b) {
		a.err = fmt.Errorf("type %d length %d of %d bytes left: %w",
			binary.NativeEndian.Uint16(a.b[2:])&nlaTypeMask, l, len(a.b), errTruncated)
		return false
	}
	a.typ = binary.NativeEndian.Uint16(a.b[2:]) & nlaTypeMask
	a.val = a.b[nlaHdrLen:l]
	// Attributes are 4-byte aligned; the last one may omit its padding.
	al := (l + 3) &^ 3
	if al > len(a.b) {
		al = len(a.b)
	}
	a.b = a.b[al:]
	return true
}

func be16(v []byte) (uint16, error) {
	if len(v) != 2 {
		return 0, errBadLength
	}
	return binary.BigEndian.Uint16(v), nil
}

func be32(v []byte) (uint32, error) {
	if len(v) != 4 {
		return 0, errBadLength
	}
	return binary.BigEndian.Uint32(v), nil
}

func be64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, errBadLength
	}
	return binary.BigEndian.Uint64(v), nil
}

func u8(v []byte) (uint8, error) {
	if len(v) != 1 {
		return 0, errBadLength
	}
	return v[0], nil
}

// decodeConn fills c from the attributes of one ctnetlink conntrack message,
// b starting after the nfgenmsg header. c is overwritten entirely; nothing in
// it refers to b afterwards. It never allocates on success.
//
// Mapping (see pkg/flow): Tuple.Src = original source, Tuple.Dst = reply
// source (the real endpoint after DNAT), OrigDst = original destination.
// ICMP and ICMPv6 carry no ports; like NetFlow/IPFIX (icmpTypeCode, IE 32)
// the destination port holds type<<8|code of the original direction and the
// source port holds the echo identifier, so that two concurrent pings between
// the same hosts are two connections. ProxySnatIP/Port are the reply
// direction's destination when it is not the original source (see
// setProxySnat).
func decodeConn(b []byte, c *flow.Conn) error {
	*c = flow.Conn{}
	var orig, reply tuple
	var haveOrig, haveReply bool
	a := attrs{b: b}
	for a.next() {
		var err error
		switch a.typ {
		case ctaTupleOrig:
			err = decodeTuple(a.val, &orig)
			haveOrig = true
		case ctaTupleReply:
			err = decodeTuple(a.val, &reply)
			haveReply = true
		case ctaStatus:
			c.Status, err = be32(a.val)
		case ctaMark:
			c.Mark, err = be32(a.val)
		case ctaID:
			c.ID, err = be32(a.val)
		case ctaZone:
			c.Zone, err = be16(a.val)
		case ctaProtoinfo:
			err = decodeProtoinfo(a.val, c)
		case ctaCountersOrig:
			err = decodeCounters(a.val, &c.Fwd)
		case ctaCountersReply:
			err = decodeCounters(a.val, &c.Rev)
		case ctaTimestamp:
			err = decodeTimestamp(a.val, c)
		}
		if err != nil {
			return fmt.Errorf("attribute %d: %w", a.typ, err)
		}
	}
	if a.err != nil {
		return a.err
	}
	if !haveOrig || !haveReply {
		return errMissingTuple
	}
	if !orig.haveSrc || !orig.haveDst || !orig.haveProto || !reply.haveSrc {
		return errBadTuple
	}
	c.Tuple.Proto = orig.proto
	c.Tuple.SrcIP = orig.src
	c.Tuple.DstIP = reply.src
	c.OrigDstIP = orig.dst
	switch orig.proto {
	case flow.ProtoICMP, flow.ProtoICMPv6:
		c.Tuple.SrcPort = orig.icmpID
		c.Tuple.DstPort = uint16(orig.icmpType)<<8 | uint16(orig.icmpCode)
		c.OrigDstPort = c.Tuple.DstPort
	default:
		c.Tuple.SrcPort = orig.sport
		c.Tuple.DstPort = reply.sport
		c.OrigDstPort = orig.dport
	}
	setProxySnat(c, &orig, &reply)
	return nil
}

// setProxySnat records where the connection's source was translated to:
// replies go to the reply tuple's destination, which is the original source
// unless the node applied source NAT (kube-proxy's masquerade of NodePort
// and LoadBalancer traffic, or a port-only rewrite to avoid a clash). Like
// Antrea's agent, a change of address or of port counts. ICMP has no port;
// its echo identifier is not one.
func setProxySnat(c *flow.Conn, orig, reply *tuple) {
	if !reply.haveDst {
		return
	}
	switch orig.proto {
	case flow.ProtoICMP, flow.ProtoICMPv6:
		if reply.dst != orig.src {
			c.ProxySnatIP = reply.dst
		}
	default:
		if reply.dst != orig.src || reply.dport != orig.sport {
			c.ProxySnatIP, c.ProxySnatPort = reply.dst, reply.dport
		}
	}
}

func decodeTuple(b []byte, t *tuple) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		switch a.typ {
		case ctaTupleIP:
			err = decodeTupleIP(a.val, t)
		case ctaTupleProto:
			err = decodeTupleProto(a.val, t)
		}
		if err != nil {
			return err
		}
	}
	return a.err
}

func decodeTupleIP(b []byte, t *tuple) error {
	a := attrs{b: b}
	for a.next() {
		switch a.typ {
		case ctaIPv4Src, ctaIPv4Dst:
			if len(a.val) != 4 {
				return fmt.Errorf("ipv4 address: %w", errBadLength)
			}
			dst := &t.src
			t.haveSrc = t.haveSrc || a.typ == ctaIPv4Src
			if a.typ == ctaIPv4Dst {
				dst = &t.dst
				t.haveDst = true
			}
			*dst = [16]byte{10: 0xff, 11: 0xff}
			copy(dst[12:], a.val)
		case ctaIPv6Src, ctaIPv6Dst:
			if len(a.val) != 16 {
				return fmt.Errorf("ipv6 address: %w", errBadLength)
			}
			if a.typ == ctaIPv6Src {
				t.src = [16]byte(a.val)
				t.haveSrc = true
			} else {
				t.dst = [16]byte(a.val)
				t.haveDst = true
			}
		}
	}
	return a.err
}

func decodeTupleProto(b []byte, t *tuple) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		switch a.typ {
		case ctaProtoNum:
			t.proto, err = u8(a.val)
			t.haveProto = true
		case ctaProtoSrcPort:
			t.sport, err = be16(a.val)
		case ctaProtoDstPort:
			t.dport, err = be16(a.val)
		case ctaProtoICMPID, ctaProtoICMPv6ID:
			t.icmpID, err = be16(a.val)
		case ctaProtoICMPType, ctaProtoICMPv6Typ:
			t.icmpType, err = u8(a.val)
		case ctaProtoICMPCode, ctaProtoICMPv6Cod:
			t.icmpCode, err = u8(a.val)
		}
		if err != nil {
			return fmt.Errorf("proto attribute %d: %w", a.typ, err)
		}
	}
	return a.err
}

func decodeProtoinfo(b []byte, c *flow.Conn) error {
	a := attrs{b: b}
	for a.next() {
		if a.typ != ctaProtoinfoTCP {
			continue
		}
		in := attrs{b: a.val}
		for in.next() {
			if in.typ == ctaProtoinfoTCPState {
				st, err := u8(in.val)
				if err != nil {
					return fmt.Errorf("tcp state: %w", err)
				}
				c.TCPState = flow.TCPState(st)
			}
		}
		if in.err != nil {
			return in.err
		}
	}
	return a.err
}

func decodeCounters(b []byte, ctr *flow.Counters) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		var v32 uint32
		switch a.typ {
		case ctaCountersPackets:
			ctr.Packets, err = be64(a.val)
		case ctaCountersBytes:
			ctr.Bytes, err = be64(a.val)
		case ctaCounters32Packets:
			v32, err = be32(a.val)
			ctr.Packets = uint64(v32)
		case ctaCounters32Bytes:
			v32, err = be32(a.val)
			ctr.Bytes = uint64(v32)
		}
		if err != nil {
			return fmt.Errorf("counter %d: %w", a.typ, err)
		}
	}
	return a.err
}

func decodeTimestamp(b []byte, c *flow.Conn) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		var v uint64
		switch a.typ {
		case ctaTimestampStart:
			v, err = be64(a.val)
			c.StartNanos = int64(v)
		case ctaTimestampStop:
			v, err = be64(a.val)
			c.StopNanos = int64(v)
		}
		if err != nil {
			return fmt.Errorf("timestamp %d: %w", a.typ, err)
		}
	}
	return a.err
}
