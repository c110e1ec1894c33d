package connstore

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// A tombstone is a slot with fDone: the connection was exported with
// end-of-flow and is kept, indexed by tuple, to recognise late reports of
// it (see the package documentation). Its fields mean:
//
//   - the connection's fields: as it ended (id, counters, start; its NAT
//     fields for Peek, though it is no longer indexed by them);
//   - periodStart: when it was retired or last requeued, which orders s.tombs;
//   - lastSeen: when a report last named it; after its DESTROY (fDestroyed),
//     when that came: any report stamped later is a new kernel entry;
//   - lastActive: with AwaitDestroy, when a complete dump first missed its
//     entry (its DESTROY is then due); zero while dumps return it.

// reviveOrIgnore handles a report on a tombstone's tuple: a newer kernel
// entry starts a new connection in the slot; anything else is a late row
// about the connection already exported.
func (s *Store) reviveOrIgnore(idx uint32, e *entry, c *flow.Conn, now int64) (uint32, Change) {
	if s.reportsPrev(e, c) {
		s.m.lateIgnored.Inc()
		return idx, Ignored
	}
	if !s.newerThanTomb(e, c, now) {
		// Remember that the kernel still reports it, so EndDump keeps the
		// tombstone for as long as the entry lingers.
		e.lastSeen = max(e.lastSeen, now)
		s.m.lateIgnored.Inc()
		return idx, Ignored
	}
	s.reuse(idx, e, c, now)
	s.retired--
	s.n++
	s.m.tombstones.Dec()
	s.m.conns.Inc()
	s.m.created.Inc()
	s.sched.Track(handleOf(idx, e.gen), now)
	return idx, Created
}

// newerThanTomb reports whether c, reported at now, is a kernel entry newer
// than the connection the tombstone e remembers. Reports of an older entry
// were set aside before (by start time).
func (s *Store) newerThanTomb(e *entry, c *flow.Conn, now int64) bool {
	return (c.ID != 0 && e.id != 0 && c.ID != e.id) ||
		(c.StartNanos != 0 && e.startNanos != 0 && c.StartNanos > e.startNanos) ||
		(hasCounters(c) && backwards(c, e)) ||
		(e.flags&fDestroyed != 0 && now > e.lastSeen)
}

// tombDestroyed records the DESTROY of the connection a tombstone stands
// for. The tombstone stays until the first dump requested after it, in case
// a dump requested before still hands over a row of the entry.
func (s *Store) tombDestroyed(e *entry, now int64) {
	e.flags |= fDestroyed
	e.lastSeen = max(e.lastSeen, now)
	e.lastActive = 0
	s.m.tombsDestroyed.Inc()
}

// retire turns the live connection at idx, just exported with end-of-flow,
// into a tombstone: still indexed by tuple, invisible to LookupConn and the
// queue.
func (s *Store) retire(idx uint32, now int64) {
	e := s.at(idx)
	s.unindexVIP(idx, e)
	e.gen++
	e.flags = fDone | e.flags&(fDestroyed|fAwaitPrev)
	if e.flags&fDestroyed == 0 {
		e.lastSeen = now
	}
	e.lastActive = 0
	e.periodStart = now
	s.tombs = append(s.tombs, uint64(handleOf(idx, e.gen)))
	s.n--
	s.retired++
	s.m.conns.Dec()
	s.m.tombstones.Inc()
}

// sweepTombs ends the tombstones that the complete dump requested at
// started shows to be no longer needed. Those retired after started are
// kept: the dump may have read their entry before they ended.
func (s *Store) sweepTombs(started int64) {
	for {
		idx, ok := s.oldestTomb()
		if !ok {
			return
		}
		e := s.at(idx)
		if e.periodStart >= started {
			return
		}
		switch {
		case e.lastSeen >= started:
			// The dump returned the entry (TIME_WAIT), or its DESTROY came
			// after the dump was requested.
			e.lastActive = 0
			s.requeueOldestTomb(idx, started)
		case s.awaitDestroy && e.flags&fDestroyed == 0:
			// Gone from the table, or expired and skipped by the dump,
			// which makes the kernel send the DESTROY only now: wait for it.
			if e.lastActive == 0 {
				e.lastActive = started
			}
			if started-e.lastActive < s.tombMaxAge {
				s.requeueOldestTomb(idx, started)
				continue
			}
			s.m.tombsDroppedAge.Inc()
			s.dropOldestTomb(idx)
		default:
			s.dropOldestTomb(idx)
		}
	}
}

// oldestTomb returns the oldest tombstone still standing.
func (s *Store) oldestTomb() (uint32, bool) {
	for s.tombHead < len(s.tombs) {
		h := s.tombs[s.tombHead]
		idx, gen := uint32(h), uint32(h>>32)
		if e := s.at(idx); e.gen == gen && e.flags&fDone != 0 {
			return idx, true
		}
		s.tombHead++ // revived or dropped since
	}
	s.tombs, s.tombHead = s.tombs[:0], 0
	return 0, false
}

// requeueOldestTomb moves idx, which oldestTomb just returned, to the back
// of the tombstone list as if retired at now.
func (s *Store) requeueOldestTomb(idx uint32, now int64) {
	e := s.at(idx)
	e.periodStart = now
	s.popTomb()
	s.tombs = append(s.tombs, uint64(handleOf(idx, e.gen)))
}

// popTomb removes the head of the tombstone list, compacting it now and then.
func (s *Store) popTomb() {
	s.tombHead++
	if s.tombHead > 1024 && 2*s.tombHead > len(s.tombs) {
		n := copy(s.tombs, s.tombs[s.tombHead:])
		s.tombs, s.tombHead = s.tombs[:n], 0
	}
}

// dropOldestTomb frees idx, which oldestTomb just returned.
func (s *Store) dropOldestTomb(idx uint32) {
	s.popTomb()
	s.release(idx)
	s.retired--
	s.m.tombstones.Dec()
}
