package dnsnames

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"
)

// answer is one address a response gave for its question's name.
type answer struct {
	addr [16]byte // IPv4 v4-mapped, as flow.Tuple holds addresses
	ttl  uint32
}

// maxAnswers bounds the addresses taken from one response; a message of
// 1232 bytes holds at most ~75 A records, so the bound only stops a
// hostile one from costing more than a real one.
const maxAnswers = 64

// maxChain bounds the CNAME hops followed from the question's name.
const maxChain = 16

// maxNameLen is the longest presentation name without its final dot.
const maxNameLen = 253

var (
	errNotResponse   = errors.New("not a successful response")
	errQuestionCount = errors.New("not exactly one question")
	errBadName       = errors.New("question name is not a hostname")
)

// parser is the Run goroutine's reusable parse state.
type parser struct {
	p      dnsmessage.Parser
	addrs  []ownedAddr
	cnames map[string]cnameRR
	out    []answer
}

// cnameRR is a CNAME record's target and TTL.
type cnameRR struct {
	target string
	ttl    uint32
}

type ownedAddr struct {
	owner string
	answer
}

// parse reads a DNS response and returns the name the client asked for
// (lower case, no final dot) with the A and AAAA answers that belong to
// it: those owned by the name itself or by a name its CNAME chain leads
// to. An answer's TTL is the smallest along the chain that reaches it
// (every CNAME on the way and the address record): the question's name
// maps to the address only while all of them are live, after which the
// client's resolver asks again and may be led elsewhere. Answers for any
// other name are ignored: an answer section may
// carry them, and they say nothing about what this client resolved.
//
// whole is false when msg is a prefix of the message (the program copies
// a bounded part): answers cut off at the end are then skipped and the
// complete ones before them used. In a whole message any malformed
// record rejects the response. The returned slice is reused by the next
// call.
func (ps *parser) parse(msg []byte, whole bool) (string, []answer, error) {
	h, err := ps.p.Start(msg)
	if err != nil {
		return "", nil, fmt.Errorf("header: %w", err)
	}
	if !h.Response || h.RCode != dnsmessage.RCodeSuccess {
		return "", nil, errNotResponse
	}
	q, err := ps.p.Question()
	if err != nil {
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return "", nil, errQuestionCount
		}
		return "", nil, fmt.Errorf("question: %w", err)
	}
	if _, err := ps.p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		if err == nil {
			return "", nil, errQuestionCount
		}
		return "", nil, fmt.Errorf("question: %w", err)
	}
	if q.Class != dnsmessage.ClassINET {
		return "", nil, fmt.Errorf("question class %v", q.Class)
	}
	qname, ok := hostname(q.Name)
	if !ok {
		return "", nil, errBadName
	}

	ps.addrs = ps.addrs[:0]
	if ps.cnames == nil {
		ps.cnames = make(map[string]cnameRR)
	}
	clear(ps.cnames)
	if err := ps.answers(whole); err != nil {
		return "", nil, err
	}

	// The names the question's chain goes through, the question first,
	// with the smallest TTL of the CNAMEs that lead to each.
	var chain [maxChain + 1]string
	var chainTTL [maxChain + 1]uint32
	chain[0] = qname
	chainTTL[0] = ^uint32(0)
	n := 1
	for n <= maxChain {
		next, ok := ps.cnames[chain[n-1]]
		if !ok || inChain(chain[:n], next.target) {
			break
		}
		chain[n] = next.target
		chainTTL[n] = min(chainTTL[n-1], next.ttl)
		n++
	}
	ps.out = ps.out[:0]
	for _, a := range ps.addrs {
		i := chainIndex(chain[:n], a.owner)
		if i >= 0 && len(ps.out) < maxAnswers {
			ans := a.answer
			ans.ttl = min(ans.ttl, chainTTL[i])
			ps.out = append(ps.out, ans)
		}
	}
	return qname, ps.out, nil
}

// answers collects the answer section's A, AAAA and CNAME records.
func (ps *parser) answers(whole bool) error {
	// cut reports whether an error is the end of a partial copy, after
	// which the complete records read so far are still good.
	cut := func(err error) error {
		if !whole {
			return nil
		}
		return fmt.Errorf("answer: %w", err)
	}
	for {
		rh, err := ps.p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return nil
		}
		if err != nil {
			return cut(err)
		}
		if rh.Class != dnsmessage.ClassINET {
			if err := ps.p.SkipAnswer(); err != nil {
				return cut(err)
			}
			continue
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := ps.p.AResource()
			if err != nil {
				return cut(err)
			}
			ps.own(rh, netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := ps.p.AAAAResource()
			if err != nil {
				return cut(err)
			}
			ps.own(rh, netip.AddrFrom16(r.AAAA))
		case dnsmessage.TypeCNAME:
			r, err := ps.p.CNAMEResource()
			if err != nil {
				return cut(err)
			}
			owner, ok1 := hostname(rh.Name)
			target, ok2 := hostname(r.CNAME)
			// One CNAME per owner (RFC 1034 3.6.2): the first wins,
			// and a hostile response cannot make the map grow past
			// what its records hold.
			if ok1 && ok2 {
				if _, dup := ps.cnames[owner]; !dup {
					ps.cnames[owner] = cnameRR{target: target, ttl: rh.TTL}
				}
			}
		default:
			if err := ps.p.SkipAnswer(); err != nil {
				return cut(err)
			}
		}
	}
}

func (ps *parser) own(rh dnsmessage.ResourceHeader, a netip.Addr) {
	owner, ok := hostname(rh.Name)
	if !ok || len(ps.addrs) >= 4*maxAnswers {
		return
	}
	ps.addrs = append(ps.addrs, ownedAddr{owner: owner, answer: answer{addr: a.As16(), ttl: rh.TTL}})
}

func inChain(chain []string, name string) bool {
	return chainIndex(chain, name) >= 0
}

func chainIndex(chain []string, name string) int {
	for i, c := range chain {
		if c == name {
			return i
		}
	}
	return -1
}

// hostname returns n in lower case without its final dot, or false when
// it is not a name a flow record should carry: empty (the root), too
// long, or holding bytes other than letters, digits, '-', '_' and the
// dots between labels. A DNS label may hold any byte; such names never
// name a host a pod connects to, and would travel into IPFIX, JSON and
// the UI.
func hostname(n dnsmessage.Name) (string, bool) {
	if n.Length == 0 || int(n.Length) > len(n.Data) {
		return "", false
	}
	b := n.Data[:n.Length]
	if b[len(b)-1] == '.' {
		b = b[:len(b)-1]
	}
	if len(b) == 0 || len(b) > maxNameLen {
		return "", false
	}
	var buf [maxNameLen]byte
	prevDot := true // a name may not start with a dot or hold ".."
	for i, c := range b {
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			if prevDot {
				return "", false
			}
		default:
			return "", false
		}
		prevDot = c == '.'
		buf[i] = c
	}
	return string(buf[:len(b)]), true
}

// maxMessages bounds the messages read from one ring record, as the
// program bounds the datagrams it reads from one GSO/GRO packet.
const maxMessages = 64

// messageLen returns the length of the DNS message at the start of b, by
// walking its sections' names and record lengths, or false when b ends
// before the message does or holds no valid message structure.
func messageLen(b []byte) (int, bool) {
	if len(b) < 12 {
		return 0, false
	}
	u16 := func(i int) int { return int(binary.BigEndian.Uint16(b[i:])) }
	qd := u16(4)
	rrs := u16(6) + u16(8) + u16(10)
	off := 12
	for i := 0; i < qd; i++ {
		var ok bool
		if off, ok = skipName(b, off); !ok || off+4 > len(b) {
			return 0, false
		}
		off += 4
	}
	for i := 0; i < rrs; i++ {
		var ok bool
		if off, ok = skipName(b, off); !ok || off+10 > len(b) {
			return 0, false
		}
		rdlen := u16(off + 8)
		off += 10 + rdlen
		if off > len(b) {
			return 0, false
		}
	}
	return off, true
}

// skipName returns the offset after the (possibly compressed) name at
// off. Each step moves forward, so the walk ends within len(b) steps.
func skipName(b []byte, off int) (int, bool) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0: // a pointer ends the name
			if off+2 > len(b) {
				return 0, false
			}
			return off + 2, true
		case l&0xc0 != 0: // reserved label types
			return 0, false
		default:
			off += 1 + l
		}
	}
	return 0, false
}
