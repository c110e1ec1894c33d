package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Netlink and nfnetlink framing (linux/netlink.h, linux/netfilter/nfnetlink.h).
const (
	nlmsgHdrLen  = 16
	nfgenHdrLen  = 4
	nlmsgNoop    = 1
	nlmsgError   = 2
	nlmsgDone    = 3
	nlmsgOverrun = 4

	nlmFRequest  = 0x1
	nlmFMulti    = 0x2
	nlmFDumpIntr = 0x10
	nlmFExcl     = 0x200
	nlmFCreate   = 0x400
	nlmFDump     = 0x300

	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTNew      = 0
	ipctnlMsgCTGet      = 1
	ipctnlMsgCTDelete   = 2

	// Multicast groups NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY (1, 2, 3) as
	// bind(2) bits: group n is bit n-1.
	groupNew     = 1 << 0
	groupUpdate  = 1 << 1
	groupDestroy = 1 << 2
)

var errMessageTruncated = errors.New("netlink message truncated")

// nlMsg is one netlink message inside a receive buffer; payload aliases it.
type nlMsg struct {
	typ     uint16
	flags   uint16
	seq     uint32
	payload []byte
}

// nextMsg splits the first netlink message off b. ok is false at the end of b.
func nextMsg(b []byte) (m nlMsg, rest []byte, ok bool, err error) {
	if len(b) == 0 {
		return nlMsg{}, nil, false, nil
	}
	if len(b) < nlmsgHdrLen {
		return nlMsg{}, nil, false, errMessageTruncated
	}
	l := int(binary.NativeEndian.Uint32(b))
	if l < nlmsgHdrLen || l > len(b) {
		return nlMsg{}, nil, false, fmt.Errorf("length %d of %d bytes: %w", l, len(b), errMessageTruncated)
	}
	m = nlMsg{
		typ:     binary.NativeEndian.Uint16(b[4:]),
		flags:   binary.NativeEndian.Uint16(b[6:]),
		seq:     binary.NativeEndian.Uint32(b[8:]),
		payload: b[nlmsgHdrLen:l],
	}
	al := (l + 3) &^ 3
	if al > len(b) {
		al = len(b)
	}
	return m, b[al:], true, nil
}

// errnoOf reads the errno carried by an NLMSG_ERROR or NLMSG_DONE payload.
// Zero means success (an ACK, or the end of a dump).
func errnoOf(payload []byte) error {
	if len(payload) < 4 {
		return nil
	}
	code := int32(binary.NativeEndian.Uint32(payload))
	if code == 0 {
		return nil
	}
	if code < 0 {
		code = -code
	}
	return syscall.Errno(code)
}

// ctPayload returns the attributes of a ctnetlink conntrack message (after
// its nfgenmsg header) and whether the message is one, or false for any
// other nfnetlink subsystem (expectations, stats).
func ctPayload(m nlMsg) ([]byte, bool) {
	if m.typ>>8 != nfnlSubsysCTNetlink || len(m.payload) < nfgenHdrLen {
		return nil, false
	}
	return m.payload[nfgenHdrLen:], true
}

// filter is the zone and mark selection of a Config, checked on every decoded
// entry: kernels before 6.8 ignore a zone in a dump request, events are never
// filtered in the kernel, and a Config may select several zones.
type filter struct {
	zones    *[1024]uint64 // bitmap of wanted zones; nil = all
	mark     uint32
	markMask uint32
}

func newFilter(cfg Config) filter {
	f := filter{mark: cfg.Mark & cfg.MarkMask, markMask: cfg.MarkMask}
	if len(cfg.Zones) > 0 {
		f.zones = new([1024]uint64)
		for _, z := range cfg.Zones {
			f.zones[z/64] |= 1 << (z % 64)
		}
	}
	return f
}

func (f *filter) match(zone uint16, mark uint32) bool {
	if f.zones != nil && f.zones[zone/64]&(1<<(zone%64)) == 0 {
		return false
	}
	return mark&f.markMask == f.mark
}

// appendAttr appends a netlink attribute with a big-endian value.
func appendAttr(b []byte, typ uint16, val []byte) []byte {
	l := nlaHdrLen + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for i := l; i%4 != 0; i++ {
		b = append(b, 0)
	}
	return b
}

// dumpRequest builds the IPCTNL_MSG_CT_GET dump request of the whole table
// (AF_UNSPEC: IPv4 and IPv6 in one dump), with the mark and, for a single
// zone, the zone as kernel-side filters so unwanted entries never cross
// into user space.
func dumpRequest(cfg Config, seq uint32) []byte {
	b := make([]byte, nlmsgHdrLen, 64)
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysCTNetlink<<8|ipctnlMsgCTGet)
	binary.NativeEndian.PutUint16(b[6:], nlmFRequest|nlmFDump)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b = append(b, 0 /* AF_UNSPEC */, 0 /* NFNETLINK_V0 */, 0, 0)
	if cfg.MarkMask != 0 {
		b = appendAttr(b, ctaMark, binary.BigEndian.AppendUint32(nil, cfg.Mark&cfg.MarkMask))
		b = appendAttr(b, ctaMarkMask, binary.BigEndian.AppendUint32(nil, cfg.MarkMask))
	}
	if len(cfg.Zones) == 1 {
		b = appendAttr(b, ctaZone, binary.BigEndian.AppendUint16(nil, cfg.Zones[0]))
	}
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	return b
}
