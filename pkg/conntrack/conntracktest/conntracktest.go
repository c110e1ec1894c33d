// Package conntracktest builds conntrack tables for tests and benchmarks:
// ctnetlink messages for synthetic entries, fresh network namespaces, and
// an N-entry table in one of them.
//
// The namespace helpers need root and `ip` (iproute2); the message builders
// need nothing.
package conntracktest

import (
	"encoding/binary"
	"net/netip"
)

// Entry is one synthetic conntrack entry. Addresses of both tuples must be of
// the same family. A reply tuple whose source differs from the original
// destination is what a DNATed connection looks like.
type Entry struct {
	Proto                      uint8
	OrigSrc, OrigDst           netip.Addr
	OrigSrcPort, OrigDstPort   uint16
	ReplySrc, ReplyDst         netip.Addr
	ReplySrcPort, ReplyDstPort uint16
	TCPState                   uint8  // kernel enum tcp_conntrack; 0 for non-TCP
	Timeout                    uint32 // seconds; must be > 0 to create
	Mark                       uint32
	Zone                       uint16
	Status                     uint32
	// Counters and timestamps are only meaningful in messages built for
	// decoder tests: the kernel ignores them on create.
	FwdPackets, FwdBytes, RevPackets, RevBytes uint64
	Start, Stop                                int64
	ID                                         uint32
}

const (
	nlaFNested = 0x8000

	ctaTupleOrig     = 1
	ctaTupleReply    = 2
	ctaStatus        = 3
	ctaProtoinfo     = 4
	ctaTimeout       = 7
	ctaMark          = 8
	ctaCountersOrig  = 9
	ctaCountersReply = 10
	ctaID            = 12
	ctaZone          = 18
	ctaTimestamp     = 20
)

// attr appends one netlink attribute; nested ones are built by appending
// children after a placeholder header and patching its length.
func attr(b []byte, typ uint16, val []byte) []byte {
	l := 4 + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for ; l%4 != 0; l++ {
		b = append(b, 0)
	}
	return b
}

func nestStart(b []byte, typ uint16) ([]byte, int) {
	at := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ|nlaFNested)
	return b, at
}

func nestEnd(b []byte, at int) []byte {
	binary.NativeEndian.PutUint16(b[at:], uint16(len(b)-at))
	return b
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func appendTuple(b []byte, typ uint16, proto uint8, src, dst netip.Addr, sport, dport uint16) []byte {
	b, t := nestStart(b, typ)
	b, ip := nestStart(b, 1) // CTA_TUPLE_IP
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		b = attr(b, 1, s[:])
		b = attr(b, 2, d[:])
	} else {
		s, d := src.As16(), dst.As16()
		b = attr(b, 3, s[:])
		b = attr(b, 4, d[:])
	}
	b = nestEnd(b, ip)
	b, p := nestStart(b, 2) // CTA_TUPLE_PROTO
	b = attr(b, 1, []byte{proto})
	switch proto {
	case 1, 58: // ICMP: sport is the id, dport type<<8|code
		idT, typT, codeT := uint16(4), uint16(5), uint16(6)
		if proto == 58 {
			idT, typT, codeT = 7, 8, 9
		}
		b = attr(b, idT, be16(sport))
		b = attr(b, typT, []byte{byte(dport >> 8)})
		b = attr(b, codeT, []byte{byte(dport)})
	default:
		b = attr(b, 2, be16(sport))
		b = attr(b, 3, be16(dport))
	}
	b = nestEnd(b, p)
	return nestEnd(b, t)
}

// AppendAttrs appends e's ctnetlink attributes (the part of a conntrack
// message after the nfgenmsg header).
func AppendAttrs(b []byte, e Entry) []byte {
	b = appendTuple(b, ctaTupleOrig, e.Proto, e.OrigSrc, e.OrigDst, e.OrigSrcPort, e.OrigDstPort)
	b = appendTuple(b, ctaTupleReply, e.Proto, e.ReplySrc, e.ReplyDst, e.ReplySrcPort, e.ReplyDstPort)
	if e.Status != 0 {
		b = attr(b, ctaStatus, be32(e.Status))
	}
	if e.Timeout != 0 {
		b = attr(b, ctaTimeout, be32(e.Timeout))
	}
	b = attr(b, ctaMark, be32(e.Mark))
	if e.Zone != 0 {
		b = attr(b, ctaZone, be16(e.Zone))
	}
	if e.Proto == 6 {
		var pi, tcp int
		b, pi = nestStart(b, ctaProtoinfo)
		b, tcp = nestStart(b, 1)
		b = attr(b, 1, []byte{e.TCPState})
		b = nestEnd(b, tcp)
		b = nestEnd(b, pi)
	}
	if e.FwdPackets|e.FwdBytes|e.RevPackets|e.RevBytes != 0 {
		for _, c := range []struct {
			typ        uint16
			pkts, byts uint64
		}{{ctaCountersOrig, e.FwdPackets, e.FwdBytes}, {ctaCountersReply, e.RevPackets, e.RevBytes}} {
			var at int
			b, at = nestStart(b, c.typ)
			b = attr(b, 1, be64(c.pkts))
			b = attr(b, 2, be64(c.byts))
			b = nestEnd(b, at)
		}
	}
	if e.Start != 0 {
		var at int
		b, at = nestStart(b, ctaTimestamp)
		b = attr(b, 1, be64(uint64(e.Start)))
		if e.Stop != 0 {
			b = attr(b, 2, be64(uint64(e.Stop)))
		}
		b = nestEnd(b, at)
	}
	if e.ID != 0 {
		b = attr(b, ctaID, be32(e.ID))
	}
	return b
}

// AppendMessage appends a whole netlink message of ctnetlink message type
// msgType (0 new, 2 delete) with flags, carrying e.
func AppendMessage(b []byte, msgType uint8, flags uint16, seq uint32, e Entry) []byte {
	at := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint16(b, 1<<8|uint16(msgType)) // NFNL_SUBSYS_CTNETLINK
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	family := byte(2) // Linux AF_INET; AF_INET6 is 10 (other systems differ)
	if e.OrigSrc.Is6() && !e.OrigSrc.Is4In6() {
		family = 10
	}
	b = append(b, family, 0, 0, 0)
	b = AppendAttrs(b, e)
	binary.NativeEndian.PutUint32(b[at:], uint32(len(b)-at))
	return b
}

// SyntheticEntry returns the i-th entry of a reproducible table: TCP
// ESTABLISHED, every fourth one IPv6, every third one DNATed from a
// "Service VIP" to an endpoint, so dumps exercise both families and NAT.
func SyntheticEntry(i int) Entry {
	e := Entry{Proto: 6, TCPState: 3, Timeout: 3600, Status: 0x8 | 0x2 /* ASSURED|SEEN_REPLY */, Mark: uint32(i % 4)}
	sport := uint16(1024 + i%60000)
	hi := byte(i >> 16)
	var cli, vip, ep netip.Addr
	if i%4 == 3 {
		cli = netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x00, 12: hi, 13: byte(i >> 8), 14: byte(i), 15: 1})
		vip = netip.MustParseAddr("fd00:96::10")
		ep = netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x01, 15: byte(i%200 + 1)})
	} else {
		cli = netip.AddrFrom4([4]byte{10, hi, byte(i >> 8), byte(i)})
		vip = netip.AddrFrom4([4]byte{10, 96, 0, 10})
		ep = netip.AddrFrom4([4]byte{10, 200, 0, byte(i%200 + 1)})
	}
	e.OrigSrc, e.OrigSrcPort = cli, sport
	e.ReplyDst, e.ReplyDstPort = cli, sport
	if i%3 == 0 {
		e.OrigDst, e.OrigDstPort = vip, 80
		e.ReplySrc, e.ReplySrcPort = ep, 8080
	} else {
		e.OrigDst, e.OrigDstPort = ep, 8080
		e.ReplySrc, e.ReplySrcPort = ep, 8080
	}
	return e
}
