package connstore

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// LookupConn finds a live connection from a 5-tuple as any observer may
// have seen it: in either direction, and either with the real endpoint or
// with the Service VIP the client dialled as the server side. It returns a
// copy and does not allocate.
func (s *Store) LookupConn(t flow.Tuple) (flow.Conn, bool) {
	idx, ok := s.lookup(&t)
	if !ok {
		return flow.Conn{}, false
	}
	return s.conn(s.at(idx)), true
}

// Peek returns the connection stored under exactly t, live or a
// tombstone (the connection as it was exported last), as a copy.
func (s *Store) Peek(t flow.Tuple) (flow.Conn, bool) {
	idx, ok := s.find(&s.byTuple, false, &t, hashTuple(&t, s.seed))
	if !ok {
		return flow.Conn{}, false
	}
	return s.conn(s.at(idx)), true
}

// find looks key up in x; vip selects which form of an entry's tuple x is
// keyed by.
func (s *Store) find(x *index, vip bool, key *flow.Tuple, h uint64) (uint32, bool) {
	n := len(x.slots)
	if n == 0 {
		return 0, false
	}
	tag := uint32(h)
	for p := homeOf(tag, n); ; {
		sl := x.slots[p]
		if sl == 0 {
			return 0, false
		}
		if uint32(sl>>32) == tag {
			idx := slotIdx(sl)
			e := s.at(idx)
			if vip {
				keys, n := s.altKeys(e)
				for i := range n {
					if keys[i] == *key {
						return idx, true
					}
				}
			} else if e.tuple == *key {
				return idx, true
			}
		}
		if p++; p == n {
			p = 0
		}
	}
}

func (s *Store) lookup(t *flow.Tuple) (uint32, bool) {
	rev := t.Reverse()
	for _, k := range [2]*flow.Tuple{t, &rev} {
		if idx, ok := s.find(&s.byTuple, false, k, hashTuple(k, s.seed)); ok && s.at(idx).flags&fLive != 0 {
			return idx, true
		}
	}
	for _, k := range [2]*flow.Tuple{t, &rev} {
		if idx, ok := s.find(&s.byVIP, true, k, hashTuple(k, s.seed)); ok {
			return idx, true
		}
	}
	return 0, false
}

// altKeys are the tuples under which other observers see a translated
// connection: the client side of a DNATed one (the Service VIP as
// destination), and the server side of a source-NATed one (the translated
// source, as the backend's interface sees a NodePort connection from
// outside). Only a connection with an ext slot can have any.
func (s *Store) altKeys(e *entry) (keys [2]flow.Tuple, n int) {
	if e.ext == 0 {
		return keys, 0
	}
	x := s.exts.at(e.ext - 1)
	c := flow.Conn{Tuple: e.tuple, OrigDstIP: x.origDstIP, OrigDstPort: x.origDstPort, ProxySnatIP: x.snatIP, ProxySnatPort: x.snatPort}
	if c.OrigDstIP != ([16]byte{}) && c.IsDNATed() {
		keys[n] = flow.Tuple{
			SrcIP: c.Tuple.SrcIP, DstIP: c.OrigDstIP,
			SrcPort: c.Tuple.SrcPort, DstPort: c.OrigDstPort, Proto: c.Tuple.Proto,
		}
		n++
	}
	if c.IsSNATed() {
		keys[n] = c.CorrelationTuple()
		n++
	}
	return keys, n
}

// indexVIP indexes e's alternative tuples (altKeys).
func (s *Store) indexVIP(idx uint32, e *entry) {
	keys, n := s.altKeys(e)
	for i := range n {
		k := &keys[i]
		h := hashTuple(k, s.seed)
		if old, found := s.find(&s.byVIP, true, k, h); found {
			// A translated tuple is unique among live kernel entries; a
			// holder can only be a connection whose end we have not seen
			// yet. The newer report wins.
			if p := s.byVIP.posOf(h, old); p >= 0 {
				s.byVIP.deleteAt(p)
			}
		}
		s.indexInsert(&s.byVIP, h, idx)
	}
}

func (s *Store) unindexVIP(idx uint32, e *entry) {
	keys, n := s.altKeys(e)
	for i := range n {
		if p := s.byVIP.posOf(hashTuple(&keys[i], s.seed), idx); p >= 0 {
			s.byVIP.deleteAt(p)
		}
	}
}

// indexInsert adds idx under h to x, and updates the memory gauge when x
// grew.
func (s *Store) indexInsert(x *index, h uint64, idx uint32) {
	n := len(x.slots)
	x.insert(h, idx)
	if len(x.slots) != n {
		s.noteMemory()
	}
}
