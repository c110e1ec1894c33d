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
		if e.conn.StopNanos == 0 {
			e.conn.StopNanos = nowNs
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
	return e.flags&fAwaitPrev != 0 && c.ID != 0 && e.conn.ID != 0 && c.ID != e.conn.ID &&
		(c.StartNanos == 0 || e.conn.StartNanos == 0)
}

// destroysOlder reports whether the DESTROY c is that of a kernel entry
// older than the one e holds: a dump saw the newer entry on the tuple before
// the loop handled the older one's DESTROY. Start times decide when both are
// known. Without them: the kernel sends an entry's DESTROY before any event
// of the entry that takes its tuple next, so while e awaits its
// predecessor's DESTROY (fAwaitPrev) the first DESTROY on the tuple is that
// one, whatever its id (ids can repeat on a tuple).
func destroysOlder(e *entry, c *flow.Conn) bool {
	if c.StartNanos != 0 && e.conn.StartNanos != 0 {
		return c.StartNanos < e.conn.StartNanos
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
	for idx := uint32(0); idx < s.hw; idx++ {
		e := s.at(idx)
		if e.flags&(fLive|fClosed) != fLive || e.lastSeen >= started {
			continue
		}
		if e.conn.StopNanos == 0 {
			e.conn.StopNanos = started
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
	if c.StartNanos != 0 && e.conn.StartNanos != 0 && c.StartNanos < e.conn.StartNanos {
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
	case c.ID != 0 && e.conn.ID != 0 && c.ID != e.conn.ID:
		s.m.replacedByID.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case counters && backwards(c, &e.conn):
		s.m.replacedByCtr.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case c.StartNanos != 0 && e.conn.StartNanos != 0 && c.StartNanos > e.conn.StartNanos:
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

	moved := counters && (c.Fwd != e.conn.Fwd || c.Rev != e.conn.Rev)
	old := e.conn
	e.conn = *c
	if !counters {
		e.conn.Fwd, e.conn.Rev = old.Fwd, old.Rev
	}
	if e.conn.StartNanos == 0 {
		e.conn.StartNanos = old.StartNanos
	}
	if e.conn.StopNanos == 0 {
		e.conn.StopNanos = old.StopNanos
	}
	if e.conn.ID == 0 {
		e.conn.ID = old.ID
	}
	if old.OrigDstIP != e.conn.OrigDstIP || old.OrigDstPort != e.conn.OrigDstPort ||
		old.ProxySnatIP != e.conn.ProxySnatIP || old.ProxySnatPort != e.conn.ProxySnatPort {
		s.unindexVIP(idx, &old)
		s.indexVIP(idx, &e.conn)
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

func backwards(c, stored *flow.Conn) bool {
	return c.Fwd.Packets < stored.Fwd.Packets || c.Fwd.Bytes < stored.Fwd.Bytes ||
		c.Rev.Packets < stored.Rev.Packets || c.Rev.Bytes < stored.Rev.Bytes
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
	s.unindexVIP(idx, &e.conn)
	s.reuse(idx, e, c, now)
	s.sched.Track(handleOf(idx, e.gen), now)
}

// reuse starts c as a live connection in the slot of the one e held,
// under a new generation so the old one's queued handles go stale, and
// keeps the old one's wait for its DESTROY (awaitingPrev).
func (s *Store) reuse(idx uint32, e *entry, c *flow.Conn, now int64) {
	*e = live(c, e.gen+1, fLive|s.awaitingPrev(e), now)
	s.indexVIP(idx, c)
}

// live is a fresh entry for c first seen at now.
func live(c *flow.Conn, gen uint32, flags uint8, now int64) entry {
	return entry{conn: *c, lastActive: now, periodStart: now, lastSeen: now, gen: gen, flags: flags}
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
	*e = live(c, e.gen, fLive, now)
	s.byTuple.insert(h, idx)
	s.indexVIP(idx, c)
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
