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
//   - A different non-zero conntrack id, a later start time, a counter below
//     the stored one, or any report stamped after the stored connection's
//     DESTROY: the kernel entry was replaced. The old connection is ended at once with
//     a final record (end-of-flow, deltas since its previous export) through
//     Config.Emit, and the tuple starts over as a new connection whose first
//     record carries its full counters. A delta is therefore never computed
//     across two kernel entries.
//   - A report whose start time is earlier than the stored connection's
//     (both known) describes an older entry whose report was handled late
//     (a dump showed the newer entry first): it is ignored and counted.
//     Without start times (nf_conntrack_timestamp off) a connection that
//     took the tuple of one whose DESTROY has not come yet treats reports
//     under another id, and the first DESTROY, as the older entry's (the
//     kernel sends all of an entry's events before the next one's); a
//     tuple reused under the same id while the loop lags behind a dump
//     cannot be told apart then.
//   - Close (the connection finished: its FIN handshake put the entry in
//     TIME_WAIT, from an UPDATE event or a dump row): the connection is
//     updated with the final counters and marked closed; the queue exports
//     it with end-of-flow on its next Expire and the store then forgets it
//     (keeping a tombstone, below).
//   - Destroyed (a DESTROY event: the kernel entry is gone): as Close for a
//     connection not exported yet. A DESTROY for a tuple never seen (a
//     connection shorter than the dump interval, or one whose other events
//     were lost) creates it closed, so it is still exported once. The
//     DESTROY of a connection already exported only ends its tombstone.
//   - EndDump(started): every open connection not reported since the dump
//     started is gone from the kernel: it is closed as above (StopNanos set
//     to the dump start when unknown) and counted as stale.
//
// # Tombstones
//
// A TCP connection ends at its FIN handshake, but its kernel entry lingers
// in TIME_WAIT for minutes (two by default) and is reported by every dump
// meanwhile; dump rows and events also race. So once the store has seen a
// dump, or when it awaits DESTROY events, a connection exported with
// end-of-flow leaves a tombstone: its slot stays indexed by tuple (with the
// counters and id it ended with) but is invisible to LookupConn, Len and the
// queue. A report matching it (same id, counters not lower, start not
// later) is ignored and counted as late; a newer kernel entry on the tuple
// takes the slot as a new connection.
//
// How long a tombstone stays depends on whether DESTROY events arrive:
//
//   - Config.AwaitDestroy unset (no events): the first complete dump
//     requested after the export that no longer returns the entry drops it.
//   - Config.AwaitDestroy set: the entry's DESTROY ends it. A dump skips an
//     entry whose timeout expired before the kernel sends its DESTROY (the
//     dump itself makes the kernel evict it), so a tombstone missing from a
//     dump keeps waiting for that event; dropping it there made the DESTROY
//     that followed look like a new connection and export its totals a
//     second time. A DESTROY that never comes (events lost) is waited for
//     TombstoneMaxAge after the first dump that missed the entry; then the
//     tombstone is dropped and counted.
//   - After its DESTROY a tombstone only guards against dump rows requested
//     before the event; the first dump requested after it drops it. Any
//     report stamped after the DESTROY is a new kernel entry, even with the
//     same conntrack id (the kernel derives ids from the entry's address and
//     tuple, so a reused tuple can get the same id).
//
// At MaxConnections the oldest tombstone is dropped (and counted when its
// DESTROY had not come) before any live connection is evicted. Tombstones
// stand for kernel entries that still exist, so a MaxConnections above the
// kernel's nf_conntrack_max also bounds them without dropping any.
//
// # Eviction
//
// At MaxConnections, inserting a new connection first evicts the least
// recently active of up to 8 open connections sampled at random, or of all of
// them in a store of at most 64 slots (closed ones already have their export
// pending and are skipped unless nothing else is found). Sampling keeps
// eviction O(1) without an LRU list in every entry;
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
// Entries (144 bytes) hold inline what every connection has; the NAT
// fields of a translated connection (36 bytes) and the counters at the
// previous export of one whose counters moved since (32 bytes) are side
// slots, so an untranslated idle connection takes no more than its entry
// (see entry in slab.go). Entries and side slots live in slabs of
// fixed-size chunks, so growing never copies a slab or needs twice its
// memory, and are found through open-addressing indexes of 8-byte slots
// that grow by half, not double. Nothing the store holds per connection
// contains a pointer, and beyond the first few thousand connections all
// of it is mapped outside the Go heap (package offheap): the garbage
// collector neither scans it nor counts it in its heap goal, which would
// otherwise let the process grow to twice the store's size, and keep it
// there, after any burst of garbage such as a start-up dump.
// BenchmarkMemoryPerConnection measures about 172 bytes per connection
// of an idle 1M table with one connection in three DNATed (204 when all
// are), the queue's deadlines (16 bytes each, only for connections that
// are not idle) included; flowlens_connstore_memory_bytes reports it.
// Freed slots are reused; the slabs do not shrink. Release gives the
// mapped memory back.
//
// # Concurrency
//
// A Store is not safe for concurrent use: it has one owner, the agent's
// loop goroutine, which makes every call (reports, EndDump, the queue's
// Expire, LookupConn for the L7 matcher and enrichers). It takes no lock:
// one owner is what makes the answers consistent (a lookup never sees half
// of a report) without slowing every update. Records are handed to emit
// once the store is consistent again, so an emit function may call
// LookupConn; it must not modify the store.
package connstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
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
	// AwaitDestroy says DESTROY events will be reported (Destroyed): set it
	// when conntrack events are on. Tombstones then wait for their
	// connection's DESTROY instead of ending when a dump misses the entry.
	AwaitDestroy bool
	// TombstoneMaxAge bounds how long, with AwaitDestroy, a tombstone waits
	// for a DESTROY after the first complete dump that no longer returned
	// its entry. The event normally follows that dump at once; it comes
	// later only when event delivery is congested and never when events were
	// lost. Dropping a tombstone whose DESTROY is merely late exports the
	// connection again, while keeping one costs a slot, so the default
	// (DefaultTombstoneMaxAge) is generous.
	TombstoneMaxAge time.Duration
}

// Limits of MaxConnections, and the default TombstoneMaxAge: a bit above
// the kernel's default TIME_WAIT (nf_conntrack_tcp_timeout_time_wait, 120
// s).
const (
	DefaultMaxConnections  = 1 << 18
	MaxMaxConnections      = 1 << 30
	DefaultTombstoneMaxAge = 150 * time.Second
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
	// one, or one already exported with end-of-flow (a tombstone; for
	// Destroyed, the DESTROY that ends the tombstone).
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

// Store is the connection store. It is not safe for concurrent use (see
// the package documentation).
type Store struct {
	max          int
	sched        Scheduler
	emit         func(*flow.Record)
	awaitDestroy bool
	tombMaxAge   int64 // ns

	entries slab[entry, *entry]
	exts    slab[extSlot, *extSlot]
	bases   slab[baseSlot, *baseSlot]
	n       int // live connections
	retired int // tombstones
	memory  int // bytes of the slabs and indexes, last reported

	// tombs lists tombstones oldest first as handles; entries whose slot
	// was since revived or dropped no longer match and are skipped.
	tombs    []uint64
	tombHead int
	dumped   bool // EndDump was called at least once: dumps can race with closes

	lastEvictLog, evictedSinceLog int64

	byTuple index
	byVIP   index // only translated connections, keyed by their other tuples (altKeys)
	seed    uint64
	rng     *rand.Rand

	// rec is reused for every record handed out; filled says the operation
	// in progress put one there (see handOut).
	rec    flow.Record
	filled bool
	m      metrics
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
	case cfg.TombstoneMaxAge < 0:
		return nil, fmt.Errorf("connstore: TombstoneMaxAge must not be negative, got %s", cfg.TombstoneMaxAge)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.TombstoneMaxAge == 0 {
		cfg.TombstoneMaxAge = DefaultTombstoneMaxAge
	}
	s := &Store{
		max:          cfg.MaxConnections,
		sched:        cfg.Scheduler,
		emit:         cfg.Emit,
		awaitDestroy: cfg.AwaitDestroy,
		tombMaxAge:   int64(cfg.TombstoneMaxAge),
		seed:         rand.Uint64(),
		rng:          rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		entries:      newSlab[entry](entryChunkBits, entryHeapChunks),
		exts:         newSlab[extSlot](sideChunkBits, sideHeapChunks),
		bases:        newSlab[baseSlot](sideChunkBits, sideHeapChunks),
	}
	if err := s.initMetrics(reg); err != nil {
		return nil, err
	}
	return s, nil
}

// Release gives back the store's memory outside the Go heap (see Memory
// layout); the store must not be used afterwards. A store never released
// keeps that memory until the process exits, which is what the agent's
// one store does; a program that makes and drops stores of more than a few
// thousand connections (tests, benchmarks) releases each one.
func (s *Store) Release() error {
	err := errors.Join(s.entries.release(), s.exts.release(), s.bases.release(), s.byTuple.release(), s.byVIP.release())
	s.n, s.retired, s.tombs, s.tombHead = 0, 0, nil, 0
	s.m.conns.Set(0)
	s.m.tombstones.Set(0)
	s.noteMemory()
	if err != nil {
		return fmt.Errorf("connstore: release: %w", err)
	}
	return nil
}

// noteMemory updates the memory gauge after a slab or an index grew.
func (s *Store) noteMemory() {
	b := s.entries.bytes() + s.exts.bytes() + s.bases.bytes() + s.byTuple.bytes() + s.byVIP.bytes()
	if b != s.memory {
		s.memory = b
		s.m.memory.Set(float64(b))
	}
}

// Len is the number of connections held, closed ones awaiting export
// included and tombstones not.
func (s *Store) Len() int { return s.n }
