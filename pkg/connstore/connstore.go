// Package connstore keeps the connections of one node, keyed by 5-tuple,
// with their totals, the counters at their previous export (so deltas are
// exact and never wrap), TCP state and times, within a fixed maximum.
//
// The store decides what a report from conntrack means; an expirequeue.Queue
// (or any Scheduler) decides when a connection is exported, and the store
// builds the record (it implements expirequeue.Source).
//
// # What a report means
//
//   - Upsert of an unknown tuple: a new connection. When the store is full, a
//     victim is evicted first (see below).
//   - Upsert of a known tuple with the same conntrack id and counters at or
//     above the stored ones: an update. A report whose counters are all zero
//     (a NEW event, or accounting off) carries no counter information and
//     leaves the stored counters alone.
//   - A different non-zero conntrack id, or a counter below the stored one:
//     the kernel entry was replaced. The old connection is ended at once with
//     a final record (end-of-flow, deltas since its previous export) through
//     Config.Emit, and the tuple starts over as a new connection whose first
//     record carries its full counters. A delta is therefore never computed
//     across two kernel entries.
//   - A report whose start time is earlier than the stored connection's
//     (both known) describes an older entry that a slow dump still returned:
//     it is ignored and counted.
//   - Close (DESTROY event): the connection is updated with the final
//     counters and marked closed; the queue exports it with end-of-flow on
//     its next Expire and the store then forgets it. A DESTROY for a tuple
//     never seen (a connection shorter than the dump interval) creates it
//     closed, so it is still exported once.
//   - EndDump(started): every open connection not reported since the dump
//     started is gone from the kernel: it is closed as above (StopNanos set
//     to the dump start when unknown) and counted as stale.
//
// # Tombstones
//
// Dump rows and events race: a dump requested before a connection ended can
// still hand its row to Upsert after the end-of-flow record went out, which
// would bring the connection back and export its totals a second time. So
// once the store has seen a dump, a connection exported with end-of-flow
// leaves a tombstone: its slot stays indexed by tuple (with the counters and
// id it ended with) but is invisible to Lookup, Len and the queue. A report
// matching it (same id, counters not lower, start not later) is ignored and
// counted as late; a newer kernel entry on the tuple takes the slot as a new
// connection. EndDump drops the tombstones exported before that dump was
// requested, since such a dump cannot return them; at MaxConnections the
// oldest tombstone is dropped before any live connection is evicted.
//
// # Eviction
//
// At MaxConnections, inserting a new connection first evicts the least
// recently active of up to 8 open connections sampled at random, or of all of
// them in a store of at most 64 slots (closed ones already have their export
// pending and are skipped unless nothing else is found). Sampling keeps eviction O(1) without an LRU list in every entry;
// connections already exported as idle are the natural victims because their
// last activity is oldest. The victim gets a final record with reason
// lack-of-resources (5) through Config.Emit before it is dropped, and is
// counted. A victim the kernel still tracks comes back with the next dump as
// a new connection whose first record repeats its totals; the
// lack-of-resources record tells the collector why. Size MaxConnections
// above the kernel's nf_conntrack_max to never evict.
//
// # Memory layout
//
// Entries (192 bytes) live in a slab of fixed-size chunks, so growing never
// copies the slab or needs twice its memory, and are found through
// open-addressing indexes of 8-byte slots; nothing the store holds per
// connection contains a pointer, so the garbage collector does not scan it.
// With the queue's 16-byte deadline, BenchmarkMemoryPerConnection measures
// about 245-255 bytes per DNATed connection. Freed slots are reused; the slab
// does not shrink.
//
// # Concurrency
//
// Upsert, Close, EndDump and the queue's Expire share one reused
// flow.Record and drive the (unlocked) queue, so they must all be called
// from one goroutine: the agent's run loop. Lookup, LookupConn, SetL7, L7 and
// Len take the store's lock and may be called from any goroutine: the L7
// matcher looks connections up from the EVE reader's. Records are handed out
// after the lock is released, so an emit function (enrichers) may call
// Lookup.
package connstore

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

var (
	_ Scheduler          = (*expirequeue.Queue)(nil)
	_ expirequeue.Source = (*Store)(nil)
)

// Scheduler is the part of the expire queue the store drives.
// *expirequeue.Queue implements it.
type Scheduler interface {
	// Track starts a flow record period for h (new connection, or an idle
	// one that moved again).
	Track(h expirequeue.Handle, nowNanos int64)
	// Due asks for h to be handled on the next expiry round (it closed).
	Due(h expirequeue.Handle)
}

// Config configures a Store.
type Config struct {
	// MaxConnections bounds the slots held: live connections plus
	// tombstones. Default DefaultMaxConnections; size it above the
	// kernel's nf_conntrack_max to never evict.
	MaxConnections int
	// Scheduler is told about new, resumed and closed connections.
	Scheduler Scheduler
	// Emit receives the final record of a connection the store ends outside
	// an expiry round: evicted (lack-of-resources) or replaced by a new
	// kernel entry on the same tuple (end-of-flow). Usually the same function
	// given to Queue.Expire. The record is only valid during the call, and
	// Emit must not modify the store.
	Emit func(*flow.Record)
}

// Limits of MaxConnections.
const (
	DefaultMaxConnections = 1 << 18
	MaxMaxConnections     = 1 << 30
)

// Change says what a report did to the store.
type Change uint8

// Change values.
const (
	// Updated: a known connection took the report's values.
	Updated Change = iota
	// Created: the tuple was unknown; a new connection is tracked.
	Created
	// Replaced: the tuple's previous connection was ended and a new one
	// started in its place.
	Replaced
	// Ignored: the report described an older connection than the stored
	// one, or one already exported with end-of-flow (a tombstone).
	Ignored
)

func (c Change) String() string {
	switch c {
	case Updated:
		return "updated"
	case Created:
		return "created"
	case Replaced:
		return "replaced"
	case Ignored:
		return "ignored"
	}
	return "change-" + strconv.Itoa(int(c))
}

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1

	evictSample = 8
	evictProbes = 64
)

// Entry flags.
const (
	fLive uint8 = 1 << iota
	fClosed
	fIdle
	fL7
	fDone // tombstone: exported with end-of-flow, kept to recognise late dump rows
)

// entry is one connection. 192 bytes, no pointers.
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

// Store is the connection store.
type Store struct {
	// mu lets other goroutines read (Lookup) while the run loop writes.
	// Records are handed out after it is released, so an emit function may
	// call Lookup.
	mu sync.RWMutex

	max   int
	sched Scheduler
	emit  func(*flow.Record)

	chunks   [][]entry
	hw       uint32 // slots ever handed out
	freeHead uint32 // first free slot + 1; 0: none
	n        int    // live connections
	retired  int    // tombstones

	// tombs lists tombstones oldest first as handles; entries whose slot
	// was since revived or dropped no longer match and are skipped.
	tombs    []uint64
	tombHead int
	dumped   bool // EndDump was called at least once: dumps can race with closes

	lastEvictLog, evictedSinceLog int64

	byTuple index
	byVIP   index // only DNATed connections, keyed by their client-side tuple
	seed    uint64
	rng     *rand.Rand

	// l7 holds L7 details only for connections that have some, so the
	// others pay nothing for the feature.
	l7 map[uint32]flow.L7

	// rec is reused for every record handed out; only the goroutine that
	// writes the store touches it.
	rec    flow.Record
	filled bool
	m      metrics
}

type metrics struct {
	conns, tombstones           prometheus.Gauge
	created, closed, stale      prometheus.Counter
	evicted, lateIgnored        prometheus.Counter
	replacedByID, replacedByCtr prometheus.Counter
	records                     [flow.EndLackResources + 1]prometheus.Counter
}

// New validates cfg and registers the store's metrics on reg (nil: not
// registered).
func New(cfg Config, reg prometheus.Registerer) (*Store, error) {
	switch {
	case cfg.MaxConnections < 0 || cfg.MaxConnections > MaxMaxConnections:
		return nil, fmt.Errorf("connstore: MaxConnections must be within [0, %d], got %d", MaxMaxConnections, cfg.MaxConnections)
	case cfg.Scheduler == nil:
		return nil, fmt.Errorf("connstore: Scheduler is required")
	case cfg.Emit == nil:
		return nil, fmt.Errorf("connstore: Emit is required (evicted and replaced connections are exported through it)")
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	s := &Store{
		max:   cfg.MaxConnections,
		sched: cfg.Scheduler,
		emit:  cfg.Emit,
		seed:  rand.Uint64(),
		rng:   rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		l7:    make(map[uint32]flow.L7),
	}
	if err := s.initMetrics(reg); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) initMetrics(reg prometheus.Registerer) error {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	replaced := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_connstore_connections_replaced_total",
		Help: "Connections ended because a new kernel entry took their tuple (new conntrack id, or counters went backwards).",
	}, []string{"cause"})
	records := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_connstore_records_emitted_total",
		Help: "Flow records produced, by flowEndReason.",
	}, []string{"reason"})
	s.m = metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_connstore_connections",
			Help: "Connections tracked.",
		}),
		tombstones: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_connstore_tombstones",
			Help: "Ended connections remembered until the next complete dump, so that a dump racing with their end does not bring them back.",
		}),
		created: counter("flowlens_connstore_connections_new_total", "Connections added to the store."),
		closed:  counter("flowlens_connstore_connections_closed_total", "Connections closed by a DESTROY event."),
		stale: counter("flowlens_connstore_connections_stale_closed_total",
			"Connections closed because a complete dump no longer had them."),
		evicted: counter("flowlens_connstore_connections_evicted_total",
			"Connections evicted at MaxConnections (exported with reason lack-of-resources)."),
		lateIgnored: counter("flowlens_connstore_late_reports_ignored_total",
			"Reports ignored because they described an older connection than the one stored for the tuple."),
		replacedByID:  replaced.WithLabelValues("id"),
		replacedByCtr: replaced.WithLabelValues("counters"),
	}
	for r := flow.EndIdleTimeout; r <= flow.EndLackResources; r++ {
		s.m.records[r] = records.WithLabelValues(r.String())
	}
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		s.m.conns, s.m.tombstones, s.m.created, s.m.closed, s.m.stale, s.m.evicted, s.m.lateIgnored, replaced, records,
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("connstore: register metrics: %w", err)
		}
	}
	return nil
}

// Len is the number of connections held, closed ones awaiting export
// included and tombstones not.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.n
}

// Upsert records one report of c (a dump entry or a NEW event) seen at now.
// Updating a known connection does not allocate.
func (s *Store) Upsert(c *flow.Conn, now time.Time) Change {
	s.mu.Lock()
	_, ch := s.upsert(c, now.UnixNano())
	filled := s.takeFilled()
	s.mu.Unlock()
	if filled {
		s.emit(&s.rec)
	}
	return ch
}

// Close records that c ended (a DESTROY event, with final counters): it is
// exported with end-of-flow on the next expiry round and then forgotten.
func (s *Store) Close(c *flow.Conn, now time.Time) Change {
	s.mu.Lock()
	ch := s.closeLocked(c, now.UnixNano())
	filled := s.takeFilled()
	s.mu.Unlock()
	if filled {
		s.emit(&s.rec)
	}
	return ch
}

func (s *Store) closeLocked(c *flow.Conn, nowNs int64) Change {
	idx, ch := s.upsert(c, nowNs)
	if ch == Ignored {
		return ch
	}
	e := s.at(idx)
	if e.flags&fClosed == 0 {
		if e.conn.StopNanos == 0 {
			e.conn.StopNanos = nowNs
		}
		s.markClosed(idx, e, nowNs)
		s.m.closed.Inc()
	}
	return ch
}

// EndDump closes every open connection that no report named since
// dumpStarted, the time the complete dump that just ended was requested. It
// returns how many it closed.
func (s *Store) EndDump(dumpStarted time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	// A tombstone retired before this dump was requested has done its job
	// unless the dump still returned its entry: a TCP connection ends at its
	// FIN handshake but its kernel entry lingers in TIME_WAIT for minutes,
	// and every dump meanwhile would otherwise bring it back.
	for {
		idx, ok := s.oldestTomb()
		if !ok {
			break
		}
		e := s.at(idx)
		if e.periodStart >= started {
			break
		}
		if e.lastSeen >= started {
			s.requeueOldestTomb(idx, started)
			continue
		}
		s.dropOldestTomb(idx)
	}
	s.dumped = true
	return closed
}

// Lookup finds a live connection from a 5-tuple as any observer may have
// seen it: in either direction, and either with the real endpoint or with
// the Service VIP the client dialled as the server side. It returns a copy,
// so it is safe from other goroutines (the L7 matcher's); LookupConn does
// the same without allocating.
func (s *Store) Lookup(t flow.Tuple) (*flow.Conn, bool) {
	c, ok := s.LookupConn(t)
	if !ok {
		return nil, false
	}
	return &c, true
}

// LookupConn is Lookup returning the connection by value.
func (s *Store) LookupConn(t flow.Tuple) (flow.Conn, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	idx, ok := s.lookup(&t)
	if !ok {
		return flow.Conn{}, false
	}
	return s.at(idx).conn, true
}

// SetL7 attaches L7 details to the connection Lookup(t) finds. They go into
// the connection's next record and are then cleared. It reports whether a
// connection was found.
func (s *Store) SetL7(t flow.Tuple, l7 flow.L7) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, ok := s.lookup(&t)
	if !ok {
		return false
	}
	s.l7[idx] = l7
	s.at(idx).flags |= fL7
	return true
}

// L7 returns the L7 details pending for the connection Lookup(t) finds, so
// the L7 matcher can merge new transactions into them.
func (s *Store) L7(t flow.Tuple) (flow.L7, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	idx, ok := s.lookup(&t)
	if !ok || s.at(idx).flags&fL7 == 0 {
		return flow.L7{}, false
	}
	return s.l7[idx], true
}

// Timing implements expirequeue.Source.
func (s *Store) Timing(h expirequeue.Handle) (expirequeue.Timing, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, e, ok := s.get(h)
	if !ok {
		return expirequeue.Timing{}, false
	}
	return expirequeue.Timing{
		LastActive:  e.lastActive,
		PeriodStart: e.periodStart,
		Moved:       e.conn.Fwd != e.baseFwd || e.conn.Rev != e.baseRev,
		Closed:      e.flags&fClosed != 0,
		ClosedAt:    e.closedAt(),
		Idle:        e.flags&fIdle != 0,
	}, true
}

// Export implements expirequeue.Source: it hands emit the record of h and
// starts a new period; idle-timeout marks the connection idle, end-of-flow
// (or any other final reason) forgets it.
func (s *Store) Export(h expirequeue.Handle, reason flow.EndReason, nowNanos int64, emit func(*flow.Record)) {
	if emit == nil {
		return
	}
	s.mu.Lock()
	s.exportLocked(h, reason, nowNanos)
	filled := s.takeFilled()
	s.mu.Unlock()
	if filled {
		emit(&s.rec)
	}
}

func (s *Store) exportLocked(h expirequeue.Handle, reason flow.EndReason, nowNanos int64) {
	idx, e, ok := s.get(h)
	if !ok {
		return
	}
	s.fill(idx, e, reason, nowNanos)
	switch reason {
	case flow.EndIdleTimeout:
		e.flags |= fIdle
	case flow.EndActiveTimeout:
	case flow.EndOfFlow:
		if s.dumped {
			s.retire(idx, nowNanos)
		} else {
			s.remove(idx)
		}
	default:
		s.remove(idx)
	}
}

func (s *Store) upsert(c *flow.Conn, now int64) (uint32, Change) {
	h := hashTuple(&c.Tuple, s.seed)
	idx, ok := s.find(&s.byTuple, false, &c.Tuple, h)
	if !ok {
		return s.insert(c, h, now), Created
	}
	e := s.at(idx)
	if e.flags&fDone != 0 {
		return s.reviveOrIgnore(idx, e, c, now)
	}
	if c.StartNanos != 0 && e.conn.StartNanos != 0 && c.StartNanos < e.conn.StartNanos {
		s.m.lateIgnored.Inc()
		return idx, Ignored
	}
	counters := hasCounters(c)
	switch {
	case c.ID != 0 && e.conn.ID != 0 && c.ID != e.conn.ID:
		s.m.replacedByID.Inc()
		s.replace(idx, e, c, now)
		return idx, Replaced
	case counters && backwards(c, &e.conn):
		s.m.replacedByCtr.Inc()
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
	if old.OrigDstIP != e.conn.OrigDstIP || old.OrigDstPort != e.conn.OrigDstPort {
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

// reviveOrIgnore handles a report on a tombstone's tuple: a newer kernel
// entry starts a new connection in the slot; anything else is a late row
// about the connection already exported.
func (s *Store) reviveOrIgnore(idx uint32, e *entry, c *flow.Conn, now int64) (uint32, Change) {
	newer := (c.ID != 0 && e.conn.ID != 0 && c.ID != e.conn.ID) ||
		(c.StartNanos != 0 && e.conn.StartNanos != 0 && c.StartNanos > e.conn.StartNanos) ||
		(hasCounters(c) && backwards(c, &e.conn))
	if !newer {
		// Remember that the kernel still reports it, so EndDump keeps the
		// tombstone for as long as the entry lingers.
		e.lastSeen = now
		s.m.lateIgnored.Inc()
		return idx, Ignored
	}
	*e = entry{
		conn:        *c,
		lastActive:  now,
		periodStart: now,
		lastSeen:    now,
		gen:         e.gen + 1,
		flags:       fLive,
	}
	s.indexVIP(idx, c)
	s.retired--
	s.n++
	s.m.tombstones.Dec()
	s.m.conns.Inc()
	s.m.created.Inc()
	s.sched.Track(handleOf(idx, e.gen), now)
	return idx, Created
}

// hasCounters tells a report that carries counters from one that has none
// (NEW events, accounting off): a real kernel entry never goes back to zero.
func hasCounters(c *flow.Conn) bool {
	return c.Fwd != (flow.Counters{}) || c.Rev != (flow.Counters{})
}

// replace ends the connection at idx with a final record and starts c in the
// same slot under a new generation.
func (s *Store) replace(idx uint32, e *entry, c *flow.Conn, now int64) {
	s.fill(idx, e, flow.EndOfFlow, now)
	s.unindexVIP(idx, &e.conn)
	if e.flags&fL7 != 0 {
		delete(s.l7, idx)
	}
	*e = entry{
		conn:        *c,
		lastActive:  now,
		periodStart: now,
		lastSeen:    now,
		gen:         e.gen + 1,
		flags:       fLive,
	}
	s.indexVIP(idx, c)
	s.sched.Track(handleOf(idx, e.gen), now)
}

func (s *Store) insert(c *flow.Conn, h uint64, now int64) uint32 {
	if s.n+s.retired >= s.max {
		// Tombstones go first: they only guard against a race, while a
		// live connection would lose its future records.
		if idx, ok := s.oldestTomb(); ok {
			s.dropOldestTomb(idx)
		} else {
			s.evictOne(now)
		}
	}
	idx := s.alloc()
	e := s.at(idx)
	*e = entry{
		conn:        *c,
		lastActive:  now,
		periodStart: now,
		lastSeen:    now,
		gen:         e.gen,
		flags:       fLive,
	}
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

// evictOne drops the least recently active of a few open connections
// sampled at random, after handing out its final record.
func (s *Store) evictOne(now int64) {
	if s.hw == 0 {
		return
	}
	victim, fallback := int64(-1), int64(-1)
	oldest := int64(math.MaxInt64)
	// A small slab is examined whole, so eviction there is exact.
	exact := s.hw <= evictProbes
	for probes, found := 0, 0; probes < evictProbes && (exact || found < evictSample); probes++ {
		idx := uint32(probes)
		if !exact {
			idx = s.rng.Uint32N(s.hw)
		} else if idx >= s.hw {
			break
		}
		e := s.at(idx)
		switch {
		case e.flags&fLive == 0:
		case e.flags&fClosed != 0:
			fallback = int64(idx)
		default:
			found++
			if e.lastActive < oldest {
				oldest, victim = e.lastActive, int64(idx)
			}
		}
	}
	if victim < 0 {
		victim = fallback
	}
	if victim < 0 {
		// The slab is mostly free slots: walk from a random point to the
		// first live one, which exists since the store is full.
		start := s.rng.Uint32N(s.hw)
		for i := uint32(0); i < s.hw; i++ {
			idx := (start + i) % s.hw
			if s.at(idx).flags&fLive != 0 {
				victim = int64(idx)
				break
			}
		}
	}
	if victim < 0 {
		return
	}
	idx := uint32(victim)
	s.m.evicted.Inc()
	s.evictedSinceLog++
	if now-s.lastEvictLog >= int64(time.Minute) {
		klog.InfoS("Connection store full: evicting least recently active connections",
			"maxConnections", s.max, "evictedSinceLastLog", s.evictedSinceLog)
		s.lastEvictLog, s.evictedSinceLog = now, 0
	}
	s.fill(idx, s.at(idx), flow.EndLackResources, now)
	s.remove(idx)
}

// fill writes the record of e into s.rec and starts a new period. The caller
// hands s.rec out once it released the lock; every locked section fills at
// most one record (an Upsert ends at most one connection: the replaced one
// or the evicted one, never both, since replacing reuses the slot).
func (s *Store) fill(idx uint32, e *entry, reason flow.EndReason, now int64) {
	r := &s.rec
	*r = flow.Record{Conn: e.conn, EndReason: reason, ExportNanos: now}
	// Deltas cannot go negative: a backwards counter replaces the
	// connection before it is stored.
	r.FwdDelta, _ = e.conn.Fwd.Sub(e.baseFwd)
	r.RevDelta, _ = e.conn.Rev.Sub(e.baseRev)
	if e.flags&fL7 != 0 {
		r.L7 = s.l7[idx]
		delete(s.l7, idx)
		e.flags &^= fL7
	}
	e.baseFwd, e.baseRev = e.conn.Fwd, e.conn.Rev
	e.periodStart = now
	if int(reason) < len(s.m.records) && s.m.records[reason] != nil {
		s.m.records[reason].Inc()
	}
	s.filled = true
}

// takeFilled reports whether the locked section that is ending filled s.rec.
func (s *Store) takeFilled() bool {
	f := s.filled
	s.filled = false
	return f
}

// remove forgets the live connection at idx.
func (s *Store) remove(idx uint32) {
	s.release(idx)
	s.n--
	s.m.conns.Dec()
}

// retire turns the live connection at idx, just exported with end-of-flow,
// into a tombstone: still indexed by tuple, invisible to Lookup and the queue.
func (s *Store) retire(idx uint32, now int64) {
	e := s.at(idx)
	s.unindexVIP(idx, &e.conn)
	if e.flags&fL7 != 0 {
		delete(s.l7, idx)
	}
	e.gen++
	e.flags = fDone
	e.lastSeen = now
	// A tombstone has no record period; periodStart holds when it was
	// retired (or last requeued), which orders s.tombs.
	e.periodStart = now
	s.tombs = append(s.tombs, uint64(handleOf(idx, e.gen)))
	s.n--
	s.retired++
	s.m.conns.Dec()
	s.m.tombstones.Inc()
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

// release unindexes and frees the slot idx.
func (s *Store) release(idx uint32) {
	e := s.at(idx)
	if p := s.byTuple.posOf(hashTuple(&e.conn.Tuple, s.seed), idx); p >= 0 {
		s.byTuple.deleteAt(p)
	}
	s.unindexVIP(idx, &e.conn)
	if e.flags&fL7 != 0 {
		delete(s.l7, idx)
	}
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

// find looks key up in x; vip selects which form of an entry's tuple x is
// keyed by.
func (s *Store) find(x *index, vip bool, key *flow.Tuple, h uint64) (uint32, bool) {
	if len(x.slots) == 0 {
		return 0, false
	}
	mask := uint64(len(x.slots) - 1)
	tag := uint32(h)
	for p := uint64(tag) & mask; ; p = (p + 1) & mask {
		sl := x.slots[p]
		if sl == 0 {
			return 0, false
		}
		if uint32(sl>>32) != tag {
			continue
		}
		idx := slotIdx(sl)
		e := s.at(idx)
		if vip {
			if k, ok := vipKey(&e.conn); ok && k == *key {
				return idx, true
			}
		} else if e.conn.Tuple == *key {
			return idx, true
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

// vipKey is the tuple a client-side observer sees for a DNATed connection:
// the Service VIP as destination. ok is false for a connection that was not
// DNATed or whose source did not report the original destination.
func vipKey(c *flow.Conn) (flow.Tuple, bool) {
	if c.OrigDstIP == ([16]byte{}) || !c.IsDNATed() {
		return flow.Tuple{}, false
	}
	return flow.Tuple{
		SrcIP: c.Tuple.SrcIP, DstIP: c.OrigDstIP,
		SrcPort: c.Tuple.SrcPort, DstPort: c.OrigDstPort, Proto: c.Tuple.Proto,
	}, true
}

func (s *Store) indexVIP(idx uint32, c *flow.Conn) {
	k, ok := vipKey(c)
	if !ok {
		return
	}
	h := hashTuple(&k, s.seed)
	if old, found := s.find(&s.byVIP, true, &k, h); found {
		// The client-side tuple is unique among live kernel entries; a
		// holder can only be a connection whose end we have not seen yet.
		// The newer report wins.
		if p := s.byVIP.posOf(h, old); p >= 0 {
			s.byVIP.deleteAt(p)
		}
	}
	s.byVIP.insert(h, idx)
}

func (s *Store) unindexVIP(idx uint32, c *flow.Conn) {
	k, ok := vipKey(c)
	if !ok {
		return
	}
	if p := s.byVIP.posOf(hashTuple(&k, s.seed), idx); p >= 0 {
		s.byVIP.deleteAt(p)
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
	for idx := uint32(0); ; idx++ {
		s.mu.Lock()
		if idx >= s.hw {
			s.mu.Unlock()
			return n
		}
		e := s.at(idx)
		moved := e.conn.Fwd != e.baseFwd || e.conn.Rev != e.baseRev
		filled := false
		switch {
		case e.flags&fLive == 0 || e.flags&fDone != 0:
		case e.flags&fClosed != 0:
			s.exportLocked(handleOf(idx, e.gen), flow.EndOfFlow, nowNs)
			filled = s.takeFilled()
		case moved:
			s.exportLocked(handleOf(idx, e.gen), flow.EndForced, nowNs)
			filled = s.takeFilled()
		}
		s.mu.Unlock()
		// Outside the lock: emit may call Lookup.
		if filled {
			emit(&s.rec)
			n++
		}
	}
}
