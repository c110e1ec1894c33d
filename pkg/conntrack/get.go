package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

const nlaFNested = 0x8000

// ErrNotFound is returned by Get when the kernel holds no entry for the tuple.
var ErrNotFound = errors.New("conntrack entry not found")

// Get refreshes c from the kernel's entry for its original tuple (source,
// original destination, zone): counters and the start time, which NEW and
// UPDATE events do not carry. The agent asks for it once per connection, when
// an event says the connection finished but it has not been dumped yet.
// Only TCP, UDP and SCTP are looked up; ICMP tuples need id/type/code
// attributes that flow.Conn folds into its ports.
func (s *Source) Get(c *flow.Conn) error {
	switch c.Tuple.Proto {
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoSCTP:
	default:
		return fmt.Errorf("get conntrack entry: protocol %d not supported", c.Tuple.Proto)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock == nil {
		sock, err := s.open(0, dumpRcvBuf)
		if err != nil {
			return fmt.Errorf("get conntrack entry: %w", err)
		}
		s.sock = sock
	}
	s.seq++
	if err := s.sock.setDeadline(time.Now().Add(s.cfg.DumpTimeout)); err != nil {
		return fmt.Errorf("get conntrack entry: set deadline: %w", err)
	}
	if err := s.sock.send(getRequest(c, s.seq)); err != nil {
		return fmt.Errorf("get conntrack entry: send: %w", err)
	}
	for {
		n, err := s.sock.recv(s.buf)
		if err != nil {
			s.sock.close()
			s.sock = nil
			return fmt.Errorf("get conntrack entry: receive: %w", err)
		}
		b := s.buf[:n]
		for {
			m, rest, ok, err := nextMsg(b)
			if err != nil {
				return fmt.Errorf("get conntrack entry: %w", err)
			}
			if !ok {
				break
			}
			b = rest
			if m.seq != s.seq {
				continue
			}
			if m.typ == nlmsgError {
				err := errnoOf(m.payload)
				if errors.Is(err, syscall.ENOENT) {
					return ErrNotFound
				}
				return fmt.Errorf("get conntrack entry %s: %w", c.Tuple, err)
			}
			payload, ok := ctPayload(m)
			if !ok {
				continue
			}
			var fresh flow.Conn
			if err := decodeConn(payload, &fresh); err != nil {
				s.m.decodeErrors.Inc()
				return fmt.Errorf("get conntrack entry %s: %w", c.Tuple, err)
			}
			*c = fresh
			return nil
		}
	}
}

// getRequest builds IPCTNL_MSG_CT_GET for the entry whose original tuple is
// (c.Tuple.Src, c.OrigDst) in c.Zone.
func getRequest(c *flow.Conn, seq uint32) []byte {
	b := make([]byte, nlmsgHdrLen, 128)
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysCTNetlink<<8|ipctnlMsgCTGet)
	binary.NativeEndian.PutUint16(b[6:], nlmFRequest)
	binary.NativeEndian.PutUint32(b[8:], seq)
	family := byte(syscall.AF_INET6)
	if c.Tuple.IsIPv4() {
		family = syscall.AF_INET
	}
	b = append(b, family, 0 /* NFNETLINK_V0 */, 0, 0)

	var ip []byte
	if family == syscall.AF_INET {
		ip = appendAttr(ip, ctaIPv4Src, c.Tuple.SrcIP[12:])
		ip = appendAttr(ip, ctaIPv4Dst, c.OrigDstIP[12:])
	} else {
		ip = appendAttr(ip, ctaIPv6Src, c.Tuple.SrcIP[:])
		ip = appendAttr(ip, ctaIPv6Dst, c.OrigDstIP[:])
	}
	var proto []byte
	proto = appendAttr(proto, ctaProtoNum, []byte{c.Tuple.Proto})
	proto = appendAttr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, c.Tuple.SrcPort))
	proto = appendAttr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, c.OrigDstPort))
	var tuple []byte
	tuple = appendAttr(tuple, ctaTupleIP|nlaFNested, ip)
	tuple = appendAttr(tuple, ctaTupleProto|nlaFNested, proto)
	b = appendAttr(b, ctaTupleOrig|nlaFNested, tuple)
	b = appendAttr(b, ctaZone, binary.BigEndian.AppendUint16(nil, c.Zone))
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	return b
}
