package connstore

import (
	"time"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Timing implements expirequeue.Source.
func (s *Store) Timing(h expirequeue.Handle) (expirequeue.Timing, bool) {
	_, e, ok := s.get(h)
	if !ok {
		return expirequeue.Timing{}, false
	}
	return expirequeue.Timing{
		LastActive:  e.lastActive,
		PeriodStart: e.periodStart,
		Moved:       s.moved(e),
		Closed:      e.flags&fClosed != 0,
		ClosedAt:    e.closedAt(),
		Idle:        e.flags&fIdle != 0,
	}, true
}

// Export implements expirequeue.Source: it offers emit the record of h and,
// only if emit takes it, starts a new period: idle-timeout marks the
// connection idle, end-of-flow (or any other final reason) forgets it. A
// refused record changes nothing (base counters, period and pending close
// stay), so the deltas are offered again, with any added since, and each
// end-of-flow is exported exactly once. emit runs while the connection is
// still stored, so it may look it up. It reports whether emit took the
// record; a handle the store no longer knows has nothing to offer and
// reports true.
func (s *Store) Export(h expirequeue.Handle, reason flow.EndReason, nowNanos int64, emit func(*flow.Record) bool) bool {
	idx, e, ok := s.get(h)
	if !ok || emit == nil {
		return !ok
	}
	if reason == flow.EndIdleTimeout && e.counters == flow.CountersConntrackLater {
		// No counter of it is known yet (a NEW carries none, and with
		// eBPF counting the rest, conntrack's come with the resync or the
		// end): a record now would be all zeros and no start time.
		s.m.emptyIdle.Inc()
		s.advance(e, reason, nowNanos)
		s.finish(idx, e, reason, nowNanos)
		return true
	}
	s.build(e, reason, nowNanos)
	if !emit(&s.rec) {
		return false
	}
	s.advance(e, reason, nowNanos)
	s.finish(idx, e, reason, nowNanos)
	return true
}

// export ends a period of h for the paths that cannot be refused (ExportAll,
// final records of replaced or evicted connections): the record is filled
// and the store changed at once, and handOut hands it to emit.
func (s *Store) export(h expirequeue.Handle, reason flow.EndReason, nowNanos int64) {
	idx, e, ok := s.get(h)
	if !ok {
		return
	}
	s.fill(e, reason, nowNanos)
	s.finish(idx, e, reason, nowNanos)
}

// finish applies what exporting e with reason means once its record was
// taken.
func (s *Store) finish(idx uint32, e *entry, reason flow.EndReason, nowNanos int64) {
	switch reason {
	case flow.EndIdleTimeout:
		e.flags |= fIdle
	case flow.EndActiveTimeout:
	case flow.EndOfFlow:
		// Without a tombstone a later report of the entry (a dump row
		// during TIME_WAIT, its DESTROY) would bring it back.
		if s.dumped || (s.awaitDestroy && e.flags&fDestroyed == 0) {
			s.retire(idx, nowNanos)
		} else {
			s.remove(idx)
		}
	default:
		s.remove(idx)
	}
}

// fill writes the record of e into s.rec and starts a new period. Every
// operation fills at most one record (an Upsert ends at most one
// connection: the replaced one or the evicted one, never both, since
// replacing reuses the slot), which handOut then hands out.
func (s *Store) fill(e *entry, reason flow.EndReason, now int64) {
	s.build(e, reason, now)
	s.advance(e, reason, now)
	s.filled = true
}

// build writes the record of e into s.rec without changing e.
func (s *Store) build(e *entry, reason flow.EndReason, now int64) {
	r := &s.rec
	*r = flow.Record{Conn: s.conn(e), EndReason: reason, ExportNanos: now}
	// Deltas cannot go negative: a backwards counter replaces the
	// connection before it is stored.
	baseFwd, baseRev := s.baseOf(e)
	r.FwdDelta, _ = e.fwd.Sub(baseFwd)
	r.RevDelta, _ = e.rev.Sub(baseRev)
}

// advance starts a new period of e once its record was taken: the next
// record's deltas start from the counters this one carried.
func (s *Store) advance(e *entry, reason flow.EndReason, now int64) {
	s.resetBase(e)
	e.periodStart = now
	if int(reason) < len(s.m.records) && s.m.records[reason] != nil {
		s.m.records[reason].Inc()
	}
}

// handOut gives emit the record the operation ending now filled, if any.
// It runs once the store is consistent again, so emit may look it up.
func (s *Store) handOut(emit func(*flow.Record)) {
	if s.filled {
		s.filled = false
		emit(&s.rec)
	}
}

// ExportAll hands emit the final record of every connection with something
// left to report, for an agent that stops: closed ones with end-of-flow, the
// others with flowEndReason forced (4), so the deltas since their previous
// export are not lost. Connections whose counters did not move since their
// previous record have nothing new and are skipped. Exported connections are
// forgotten. It returns how many records it emitted.
func (s *Store) ExportAll(now time.Time, emit func(*flow.Record)) int {
	nowNs := now.UnixNano()
	n := 0
	for idx := uint32(0); idx < s.entries.hw; idx++ {
		e := s.at(idx)
		switch {
		case e.flags&fLive == 0 || e.flags&fDone != 0:
			continue
		case e.flags&fClosed != 0:
			s.export(handleOf(idx, e.gen), flow.EndOfFlow, nowNs)
		case s.moved(e):
			s.export(handleOf(idx, e.gen), flow.EndForced, nowNs)
		default:
			continue
		}
		s.handOut(emit)
		n++
	}
	return n
}
