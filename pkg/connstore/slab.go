package connstore

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/offheap"
)

// Entry flags: the state of the connection.
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

// Layout bits: where the fields an entry does not hold inline are.
const (
	// lOrigIsDst: the connection was not translated: OrigDst is the
	// tuple's destination (without it and without ext, OrigDst is zero).
	lOrigIsDst uint8 = 1 << iota
	// lBaseZero: nothing was exported yet: the base counters are zero
	// (without it and without base, they equal the current counters).
	lBaseZero
)

// entry is one connection: 144 bytes, no pointers. It holds inline what
// every connection has, and refers to side slots for what only some need:
//
//   - ext (the Service VIP the client dialled, the source NAT of a
//     NodePort connection): only translated connections have one. An
//     untranslated connection's OrigDst is its tuple's destination
//     (lOrigIsDst), or zero as reported.
//   - base (the counters at the previous export, from which the next
//     record's deltas are counted): only a connection whose counters moved
//     since its previous record has one. An idle connection's base is its
//     current counters, a connection not exported yet has zero
//     (lBaseZero).
//
// Every field of a flow.Conn is kept exactly (conn rebuilds it), so
// records and lookups are what they were with the whole Conn inline (208
// bytes); on an idle table the side slots are almost all free.
//
// A tombstone (fDone) gives some fields another meaning; see tombstones.go.
type entry struct {
	startNanos, stopNanos int64
	fwd, rev              flow.Counters
	lastActive            int64 // Unix ns: counters last moved, or first seen
	periodStart           int64 // Unix ns: previous export or start of period
	// lastSeen is when a report last named the connection (Unix ns). In a
	// free slot it links the free list instead (next free index + 1).
	lastSeen         int64
	mark, id, status uint32
	gen              uint32 // bumped when the slot is freed or reused, so old handles miss
	ext, base        uint32 // side slot + 1; 0: none (see above)
	tuple            flow.Tuple
	zone             uint16
	tcpState         flow.TCPState
	counters         flow.CounterSource
	flags, layout    uint8
}

// extSlot holds a translated connection's NAT fields, exactly as reported.
type extSlot struct {
	origDstIP, snatIP     [16]byte
	origDstPort, snatPort uint16
}

// baseSlot holds the counters at a connection's previous export.
type baseSlot struct {
	fwd, rev flow.Counters
}

func (e *entry) link() uint32     { return uint32(e.lastSeen) }
func (e *entry) setLink(n uint32) { e.lastSeen = int64(n) }

func (x *extSlot) link() uint32     { return binary.LittleEndian.Uint32(x.origDstIP[:4]) }
func (x *extSlot) setLink(n uint32) { binary.LittleEndian.PutUint32(x.origDstIP[:4], n) }

func (b *baseSlot) link() uint32     { return uint32(b.fwd.Packets) }
func (b *baseSlot) setLink(n uint32) { b.fwd.Packets = uint64(n) }

// linked is a slot type whose free slots link the free list through one
// of their own fields.
type linked[T any] interface {
	*T
	link() uint32
	setLink(uint32)
}

// slab holds Ts in chunks of 1<<bits, handed out by index. Chunks never
// move, so growing copies nothing and never needs twice the memory, and a
// *T stays valid while its slot is held. The first heapChunks chunks are
// on the Go heap, so that a small store (every unit test) maps nothing;
// the others are mapped outside it (package offheap: the garbage
// collector's heap goal then does not double the store). Freed slots are
// reused, last freed first; the slab does not shrink.
type slab[T any, P linked[T]] struct {
	chunks     [][]T
	maps       []offheap.Mapping
	bits       uint8
	heapChunks int
	hw         uint32 // slots ever handed out
	freeHead   uint32 // first free slot + 1; 0: none
	used       int
}

func newSlab[T any, P linked[T]](bits uint8, heapChunks int) slab[T, P] {
	return slab[T, P]{bits: bits, heapChunks: heapChunks}
}

func (s *slab[T, P]) at(i uint32) *T { return &s.chunks[i>>s.bits][i&(1<<s.bits-1)] }

// alloc hands out a slot; its content is whatever its last holder left
// (the caller sets it whole).
func (s *slab[T, P]) alloc() uint32 {
	s.used++
	if s.freeHead != 0 {
		i := s.freeHead - 1
		s.freeHead = P(s.at(i)).link()
		return i
	}
	i := s.hw
	if int(i>>s.bits) == len(s.chunks) {
		n := 1 << s.bits
		var c []T
		var m offheap.Mapping
		if len(s.chunks) < s.heapChunks {
			c = make([]T, n)
		} else {
			c, m = offheap.Make[T](n)
		}
		s.chunks = append(s.chunks, c)
		s.maps = append(s.maps, m)
	}
	s.hw++
	return i
}

// free returns slot i, whose content the caller no longer needs (but may
// have set, e.g. an entry's generation: only the link field is written).
func (s *slab[T, P]) free(i uint32) {
	P(s.at(i)).setLink(s.freeHead)
	s.freeHead = i + 1
	s.used--
}

func (s *slab[T, P]) bytes() int {
	var t T
	return len(s.chunks) << s.bits * int(unsafe.Sizeof(t))
}

// release unmaps the chunks outside the Go heap; the slab is empty after.
func (s *slab[T, P]) release() error {
	var errs []error
	for i := range s.maps {
		errs = append(errs, s.maps[i].Free())
	}
	*s = slab[T, P]{bits: s.bits, heapChunks: s.heapChunks}
	return errors.Join(errs...)
}

// Chunk sizes: 1024 entries (144 KiB; the first 8 chunks, 8192
// connections, on the Go heap), 4096 side slots.
const (
	entryChunkBits  = 10
	entryHeapChunks = 8
	sideChunkBits   = 12
	sideHeapChunks  = 1
)

// conn rebuilds the connection e holds.
func (s *Store) conn(e *entry) flow.Conn {
	c := flow.Conn{
		Tuple:      e.tuple,
		Zone:       e.zone,
		Mark:       e.mark,
		ID:         e.id,
		Status:     e.status,
		TCPState:   e.tcpState,
		Counters:   e.counters,
		StartNanos: e.startNanos,
		StopNanos:  e.stopNanos,
		Fwd:        e.fwd,
		Rev:        e.rev,
	}
	switch {
	case e.ext != 0:
		x := s.exts.at(e.ext - 1)
		c.OrigDstIP, c.OrigDstPort, c.ProxySnatIP, c.ProxySnatPort = x.origDstIP, x.origDstPort, x.snatIP, x.snatPort
	case e.layout&lOrigIsDst != 0:
		c.OrigDstIP, c.OrigDstPort = e.tuple.DstIP, e.tuple.DstPort
	}
	return c
}

// setNAT stores c's NAT fields in e: inline when untranslated, else in an
// ext slot (taken or reused).
func (s *Store) setNAT(e *entry, c *flow.Conn) {
	e.layout &^= lOrigIsDst
	snat := c.ProxySnatIP != [16]byte{} || c.ProxySnatPort != 0
	var inline bool
	switch {
	case snat:
	case c.OrigDstIP == c.Tuple.DstIP && c.OrigDstPort == c.Tuple.DstPort:
		e.layout |= lOrigIsDst
		inline = true
	case c.OrigDstIP == [16]byte{} && c.OrigDstPort == 0:
		inline = true
	}
	if inline {
		s.freeExt(e)
		return
	}
	if e.ext == 0 {
		n := len(s.exts.chunks)
		e.ext = s.exts.alloc() + 1
		if len(s.exts.chunks) != n {
			s.noteMemory()
		}
	}
	*s.exts.at(e.ext - 1) = extSlot{origDstIP: c.OrigDstIP, origDstPort: c.OrigDstPort, snatIP: c.ProxySnatIP, snatPort: c.ProxySnatPort}
}

// natEqual reports whether c's NAT fields are the ones e holds.
func (s *Store) natEqual(e *entry, c *flow.Conn) bool {
	switch {
	case e.ext != 0:
		x := s.exts.at(e.ext - 1)
		return x.origDstIP == c.OrigDstIP && x.origDstPort == c.OrigDstPort && x.snatIP == c.ProxySnatIP && x.snatPort == c.ProxySnatPort
	case c.ProxySnatIP != [16]byte{} || c.ProxySnatPort != 0:
		return false
	case e.layout&lOrigIsDst != 0:
		return c.OrigDstIP == e.tuple.DstIP && c.OrigDstPort == e.tuple.DstPort
	}
	return c.OrigDstIP == [16]byte{} && c.OrigDstPort == 0
}

func (s *Store) freeExt(e *entry) {
	if e.ext != 0 {
		s.exts.free(e.ext - 1)
		e.ext = 0
	}
}

// baseOf returns the counters at e's previous export.
func (s *Store) baseOf(e *entry) (fwd, rev flow.Counters) {
	switch {
	case e.base != 0:
		b := s.bases.at(e.base - 1)
		return b.fwd, b.rev
	case e.layout&lBaseZero != 0:
		return flow.Counters{}, flow.Counters{}
	}
	return e.fwd, e.rev
}

// moved reports whether e's counters moved since its previous export.
func (s *Store) moved(e *entry) bool {
	fwd, rev := s.baseOf(e)
	return e.fwd != fwd || e.rev != rev
}

// keepBase is called before e's counters change: a base that was "the
// current counters" must be written down first.
func (s *Store) keepBase(e *entry) {
	if e.base == 0 && e.layout&lBaseZero == 0 {
		n := len(s.bases.chunks)
		e.base = s.bases.alloc() + 1
		if len(s.bases.chunks) != n {
			s.noteMemory()
		}
		*s.bases.at(e.base - 1) = baseSlot{fwd: e.fwd, rev: e.rev}
	}
}

// resetBase makes e's current counters its base (a record carried them).
func (s *Store) resetBase(e *entry) {
	if e.base != 0 {
		s.bases.free(e.base - 1)
		e.base = 0
	}
	e.layout &^= lBaseZero
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
	if p := s.byTuple.posOf(hashTuple(&e.tuple, s.seed), idx); p >= 0 {
		s.byTuple.deleteAt(p)
	}
	s.unindexVIP(idx, e)
	s.freeSide(e)
	*e = entry{gen: e.gen + 1}
	s.entries.free(idx)
}

// freeSide gives back e's side slots, before e is cleared or reused.
func (s *Store) freeSide(e *entry) {
	s.freeExt(e)
	s.resetBase(e)
}

func (s *Store) alloc() uint32 {
	n := len(s.entries.chunks)
	idx := s.entries.alloc()
	if len(s.entries.chunks) != n {
		s.noteMemory()
	}
	return idx
}

func (s *Store) at(idx uint32) *entry { return s.entries.at(idx) }

func handleOf(idx, gen uint32) expirequeue.Handle {
	return expirequeue.Handle(uint64(gen)<<32 | uint64(idx))
}

func (s *Store) get(h expirequeue.Handle) (uint32, *entry, bool) {
	idx, gen := uint32(h), uint32(h>>32)
	if idx >= s.entries.hw {
		return 0, nil, false
	}
	e := s.at(idx)
	if e.gen != gen || e.flags&fLive == 0 {
		return 0, nil, false
	}
	return idx, e, true
}
