package connstore

import (
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1
)

// Entry flags.
const (
	fLive uint8 = 1 << iota
	fClosed
	fIdle
	// fDestroyed: the entry's DESTROY event came; the kernel no longer
	// holds it.
	fDestroyed
	// fAwaitPrev: the entry took the tuple of an earlier kernel entry whose
	// DESTROY has not come yet; a DESTROY with that other id is the earlier
	// entry's.
	fAwaitPrev
	fDone // tombstone: exported with end-of-flow, kept to recognise late reports
)

// entry is one connection. 208 bytes, no pointers. A tombstone (fDone)
// gives some fields another meaning; see tombstones.go.
type entry struct {
	conn flow.Conn
	// baseFwd/baseRev are the totals at the previous export.
	baseFwd, baseRev flow.Counters
	lastActive       int64 // Unix ns: counters last moved, or first seen
	periodStart      int64 // Unix ns: previous export or start of period
	// lastSeen is when a report last named the connection (Unix ns). In a
	// free slot it links the free list instead (next free index + 1).
	lastSeen int64
	gen      uint32 // bumped when the slot is freed or reused, so old handles miss
	flags    uint8
}

// closedAt is when a closed entry was closed, zero for an open one.
func (e *entry) closedAt() int64 {
	if e.flags&fClosed == 0 {
		return 0
	}
	return e.periodStart
}

// remove forgets the live connection at idx.
func (s *Store) remove(idx uint32) {
	s.release(idx)
	s.n--
	s.m.conns.Dec()
}

// release unindexes and frees the slot idx.
func (s *Store) release(idx uint32) {
	e := s.at(idx)
	if p := s.byTuple.posOf(hashTuple(&e.conn.Tuple, s.seed), idx); p >= 0 {
		s.byTuple.deleteAt(p)
	}
	s.unindexVIP(idx, &e.conn)
	*e = entry{gen: e.gen + 1, lastSeen: int64(s.freeHead)}
	s.freeHead = idx + 1
}

func (s *Store) alloc() uint32 {
	if s.freeHead != 0 {
		idx := s.freeHead - 1
		s.freeHead = uint32(s.at(idx).lastSeen)
		return idx
	}
	idx := s.hw
	if int(idx>>chunkBits) == len(s.chunks) {
		s.chunks = append(s.chunks, make([]entry, chunkSize))
	}
	s.hw++
	return idx
}

func (s *Store) at(idx uint32) *entry { return &s.chunks[idx>>chunkBits][idx&chunkMask] }

func handleOf(idx, gen uint32) expirequeue.Handle {
	return expirequeue.Handle(uint64(gen)<<32 | uint64(idx))
}

func (s *Store) get(h expirequeue.Handle) (uint32, *entry, bool) {
	idx, gen := uint32(h), uint32(h>>32)
	if idx >= s.hw {
		return 0, nil, false
	}
	e := s.at(idx)
	if e.gen != gen || e.flags&fLive == 0 {
		return 0, nil, false
	}
	return idx, e, true
}
