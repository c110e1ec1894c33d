package connstore

import (
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Upsert records one report of c (a dump entry or a NEW event) seen at now.
// Updating a known connection does not allocate.
func (s *Store) Upsert(c *flow.Conn, now time.Time) Change {
	_, ch := s.upsert(c, now.UnixNano())
	s.handOut(s.emit)
	return ch
}

// Close records that c finished (its FIN handshake, from an UPDATE event or
// a dump row, with final counters): it is exported with end-of-flow on the
// next expiry round and then forgotten.
func (s *Store) Close(c *flow.Conn, now time.Time) Change {
	_, ch := s.close(c, now.UnixNano())
	s.handOut(s.emit)
	return ch
}

// Destroyed records a DESTROY event: the kernel entry of c is gone. A
// connection not exported yet is closed as by Close; the DESTROY of one
// already exported ends its tombstone and exports nothing (Ignored); the
// DESTROY of a tuple never seen is a connection that lived between the
// store's observations and is exported once (Created).
func (s *Store) Destroyed(c *flow.Conn, now time.Time) Change {
	ch := s.destroyed(c, now.UnixNano())
	s.handOut(s.emit)
	return ch
}

func (s *Store) close(c *flow.Conn, nowNs int64) (uint32, Change) {
	idx, ch := s.upsert(c, nowNs)
	if ch == Ignored {
		return idx, ch
	}
	e := s.at(idx)
	if e.flags&fClosed == 0 {
		if e.stopNanos == 0 {
			e.stopNanos = nowNs
		}
		s.markClosed(idx, e, nowNs)
		s.m.closed.Inc()
	}
	return idx, ch
}

func (s *Store) destroyed(c *flow.Conn, now int64) Change {
	if idx, ok := s.find(&s.byTuple, false, &c.Tuple, hashTuple(&c.Tuple, s.seed)); ok {
		e := s.at(idx)
		switch {
		case destroysOlder(e, c):
			e.flags &^= fAwaitPrev
			s.m.lateIgnored.Inc()
			return Ignored
		case e.flags&fDone != 0 && !s.newerThanTomb(e, c, now):
			s.tombDestroyed(e, now)
			return Ignored
		}
	}
	idx, ch := s.close(c, now)
	if ch != Ignored {
		// Reports stamped after this are about a new kernel entry; lastSeen
		// (which upsert moved to now) keeps when that was. No earlier
		// DESTROY is awaited any more: the kernel would have sent it first.
		e := s.at(idx)
		e.flags = e.flags&^fAwaitPrev | fDestroyed
	}
	return ch
}

// reportsPrev reports whether c, under another id than e's, is a late
// report of the kernel entry e replaced. Without start times to compare,
// that is so while e awaits that entry's DESTROY: the kernel sends all of an
// entry's events before the first of the entry that takes its tuple next,
// so only a dump can have shown e first.
func (s *Store) reportsPrev(e *entry, c *flow.Conn) bool {
	return e.flags&fAwaitPrev != 0 && c.ID != 0 && e.id != 0 && c.ID != e.id &&
		(c.StartNanos == 0 || e.startNanos == 0)
}

// destroysOlder reports whether the DESTROY c is that of a kernel entry
// older than the one e holds: a dump saw the newer entry on the tuple before
// the loop handled the older one's DESTROY. Start times decide when both are
// known. Without them: the kernel sends an entry's DESTROY before any event
// of the entry that takes its tuple next, so while e awaits its
// predecessor's DESTROY (fAwaitPrev) the first DESTROY on the tuple is that
// one, whatever its id (ids can repeat on a tuple).
func destroysOlder(e *entry, c *flow.Conn) bool {
	if c.StartNanos != 0 && e.startNanos != 0 {
		return c.StartNanos < e.startNanos
	}
	return e.flags&fAwaitPrev != 0
}

// EndDump closes every open connection that no report named since
// dumpStarted, the time the complete dump that just ended was requested,
// and ends the tombstones that dump shows to be no longer needed. It
// returns how many connections it closed.
func (s *Store) EndDump(dumpStarted time.Time) int {
	started := dumpStarted.UnixNano()
	closed := 0
	for idx := uint32(0); idx < s.entries.hw; idx++ {
		e := s.at(idx)
		if e.flags&(fLive|fClosed) != fLive || e.lastSeen >= started {
			continue
		}
		if e.stopNanos == 0 {
			e.stopNanos = started
		}
		s.markClosed(idx, e, started)
		closed++
	}
	s.m.stale.Add(float64(closed))
	s.sweepTombs(started)
	s.dumped = true
	return closed
}

func (s *Store) upsert(c *flow.Conn, now int64) (uint32, Change) {
	h := hashTuple(&c.Tuple, s.seed)
	idx, ok := s.find(&s.byTuple, false, &c.Tuple, h)
	if !ok {
		return s.insert(c, h, now), Created
	}
	e := s.at(idx)
	if c.StartNanos != 0 && e.startNanos != 0 && c.StartNanos < e.startNanos {
		s.m.lateIgnored.Inc()
		return idx, Ignored
	}
	if e.flags&fDone != 0 {
		return s.reviveOrIgnore(idx, e, c, now)
	}
	counters := hasCounters(c)
	switch {
	case s.reportsPrev(e, c):
		s.m.lateIgnored.Inc()
		return idx, Ignored
	case c.ID != 0 && e.id != 0 && c.ID != e.id:
		s.m.replacedByID.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case counters && backwards(c, e):
		s.m.replacedByCtr.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case c.StartNanos != 0 && e.startNanos != 0 && c.StartNanos > e.startNanos:
		// The kernel stamps an entry's start once: a later one is a new
		// entry, even under the same id.
		s.m.replacedByStart.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case e.flags&fDestroyed != 0 && now > e.lastSeen:
		// Its kernel entry is gone: whatever reports the tuple now is a
		// new one, even under the same id.
		s.m.replacedAfterDestroy.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	}

	moved := counters && (c.Fwd != e.fwd || c.Rev != e.rev)
	if moved {
		s.keepBase(e)
		e.fwd, e.rev = c.Fwd, c.Rev
	}
	// A report without a start time, stop time or id leaves the known one.
	if c.StartNanos != 0 {
		e.startNanos = c.StartNanos
	}
	if c.StopNanos != 0 {
		e.stopNanos = c.StopNanos
	}
	if c.ID != 0 {
		e.id = c.ID
	}
	e.zone, e.mark, e.status, e.tcpState, e.counters = c.Zone, c.Mark, c.Status, c.TCPState, c.Counters
	if !s.natEqual(e, c) {
		s.unindexVIP(idx, e)
		s.setNAT(e, c)
		s.indexVIP(idx, e)
	}
	// Dump rows carry the dump's start time and may be handled after
	// events stamped later: times only move forward.
	e.lastSeen = max(e.lastSeen, now)
	if moved {
		e.lastActive = max(e.lastActive, now)
		if e.flags&(fIdle|fClosed) == fIdle {
			// Activity after an idle export: a new flow record period.
			e.flags &^= fIdle
			e.periodStart = now
			s.sched.Track(handleOf(idx, e.gen), now)
		}
	}
	return idx, Updated
}

// backwards reports whether a counter of c is below e's.
func backwards(c *flow.Conn, e *entry) bool {
	return c.Fwd.Packets < e.fwd.Packets || c.Fwd.Bytes < e.fwd.Bytes ||
		c.Rev.Packets < e.rev.Packets || c.Rev.Bytes < e.rev.Bytes
}

// hasCounters tells a report that carries counters from one that has none
// (NEW events, accounting off): a real kernel entry never goes back to zero.
func hasCounters(c *flow.Conn) bool {
	return c.Fwd != (flow.Counters{}) || c.Rev != (flow.Counters{})
}

// replace ends the connection at idx with a final record and starts c in the
// same slot under a new generation.
func (s *Store) replace(idx uint32, e *entry, c *flow.Conn, now int64) {
	s.fill(e, flow.EndOfFlow, now)
	s.unindexVIP(idx, e)
	s.reuse(idx, e, c, now)
	s.sched.Track(handleOf(idx, e.gen), now)
}

// reuse starts c as a live connection in the slot of the one e held
// (already unindexed from byVIP), under a new generation so the old one's
// queued handles go stale, and keeps the old one's wait for its DESTROY
// (awaitingPrev).
func (s *Store) reuse(idx uint32, e *entry, c *flow.Conn, now int64) {
	s.setLive(idx, e, c, e.gen+1, fLive|s.awaitingPrev(e), now)
}

// setLive makes e, at idx and indexed by c's tuple, the fresh connection c
// first seen at now, and indexes its alternative tuples. Whatever side
// slots e held are given back.
func (s *Store) setLive(idx uint32, e *entry, c *flow.Conn, gen uint32, flags uint8, now int64) {
	s.freeSide(e)
	*e = entry{
		tuple:       c.Tuple,
		zone:        c.Zone,
		mark:        c.Mark,
		id:          c.ID,
		status:      c.Status,
		tcpState:    c.TCPState,
		counters:    c.Counters,
		startNanos:  c.StartNanos,
		stopNanos:   c.StopNanos,
		fwd:         c.Fwd,
		rev:         c.Rev,
		lastActive:  now,
		periodStart: now,
		lastSeen:    now,
		gen:         gen,
		flags:       flags,
		// Its first record carries its full counters.
		layout: lBaseZero,
	}
	s.setNAT(e, c)
	s.indexVIP(idx, e)
}

// awaitingPrev is the flag a new entry on e's tuple takes: fAwaitPrev when
// the DESTROY of the kernel entry e held is still to come.
func (s *Store) awaitingPrev(e *entry) uint8 {
	if s.awaitDestroy && e.flags&fDestroyed == 0 {
		return fAwaitPrev
	}
	return 0
}

func (s *Store) insert(c *flow.Conn, h uint64, now int64) uint32 {
	if s.n+s.retired >= s.max {
		// Tombstones go first: they only guard against a race, while a
		// live connection would lose its future records.
		if idx, ok := s.oldestTomb(); ok {
			if s.at(idx).flags&fDestroyed == 0 {
				s.m.tombsDroppedFull.Inc()
			}
			s.dropOldestTomb(idx)
		} else {
			s.evictOne(now)
		}
	}
	idx := s.alloc()
	e := s.at(idx)
	s.indexInsert(&s.byTuple, h, idx)
	s.setLive(idx, e, c, e.gen, fLive, now)
	s.n++
	s.m.conns.Inc()
	s.m.created.Inc()
	s.sched.Track(handleOf(idx, e.gen), now)
	return idx
}

// markClosed marks e closed at nowNs. A closed entry has no record period
// left (only its final export follows), so periodStart holds the close
// time, from which the queue may hold that export back; lastSeen cannot,
// since dump rows of an entry lingering in TIME_WAIT keep moving it.
func (s *Store) markClosed(idx uint32, e *entry, nowNs int64) {
	e.flags |= fClosed
	e.periodStart = nowNs
	s.sched.Due(handleOf(idx, e.gen))
}
